"""Load a :class:`RunConfig` from YAML plus ``key=value`` overrides.

Overrides use dotted keys (``train.lr=0.05``, ``regularization.rules[0].penalty.strength=1e-4``
or ``...rules.0...``) and YAML scalar typing for the value (``true``, ``3``, ``[1, 64]``).
They are checked against the schema before they are applied, so a typo in ``--set``
is reported as such rather than blamed on the file.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from shrinkage.config.convert import convert, fail, field_types, key_suggestion, unwrap_optional, variants
from shrinkage.config.schema import RunConfig
from shrinkage.errors import ConfigError

log = logging.getLogger(__name__)

_INDEX = re.compile(r"^([^\[\]]*)((?:\[\d+\])+)$")
_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping repeats a key; ``key`` is its dotted path, ``line`` the repeat's (1-based)."""

    def __init__(self, key: str, line: int) -> None:
        super().__init__(f"line {line}: duplicate key '{key}'")
        self.key = key
        self.line = line


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key repeated in one mapping.

    Plain YAML loading lets the last occurrence silently win, so a config that sets
    ``lr`` twice would train with whichever came last. Keys brought in by a merge
    (``<<: *anchor``) may still be overridden: that is what merges are for.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        # dotted paths are computed once up front: a mapping constructor only sees its node
        self._paths = _node_paths(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # checked before the base class flattens merges into node.value (merged keys would look repeated)
        if isinstance(node, yaml.MappingNode):
            self._check_unique(node)
        return super().construct_mapping(node, deep=deep)

    def _check_unique(self, node: yaml.MappingNode) -> None:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            try:
                if key in seen:
                    where = getattr(self, "_paths", {}).get(id(node), "")
                    raise DuplicateKeyError(_join_key(where, key), key_node.start_mark.line + 1)
                seen.add(key)
            except TypeError:  # unhashable key: the base class reports it
                continue


def _join_key(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _node_paths(root: yaml.Node) -> dict[int, str]:
    """``id(node) -> dotted path`` for every mapping/sequence under ``root`` (first path wins)."""
    paths: dict[int, str] = {}
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in paths:  # an alias: already seen (also stops recursive anchors)
            continue
        if isinstance(node, yaml.MappingNode):
            paths[id(node)] = path
            for key_node, value_node in reversed(node.value):
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                stack.append((value_node, path if key_node.tag == _MERGE_TAG else _join_key(path, key)))
        elif isinstance(node, yaml.SequenceNode):
            paths[id(node)] = path
            stack.extend((item, f"{path}[{i}]") for i, item in reversed(list(enumerate(node.value))))
    return paths


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that raises :class:`DuplicateKeyError` on a repeated mapping key."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read ``path`` (YAML), apply ``overrides`` (``"a.b=value"``) and validate everything."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    return parse_config(text, str(path), overrides)


def parse_config(text: str, source: str, overrides: Sequence[str] = ()) -> RunConfig:
    """Like :func:`load_config` for YAML ``text``; ``source`` names it in error messages."""
    try:
        raw = load_yaml(text)
    except DuplicateKeyError as error:
        raise ConfigError(f"{source}: line {error.line}: duplicate key '{error.key}'") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(raw).__name__}")
    set_by: dict[str, str] = {}
    for text_override in overrides:
        keys, value = parse_override(text_override)
        dotted = _dotted(keys)
        _check_keys(keys, f"--set {text_override}")
        raw = _apply(raw, keys, value, f"--set {text_override}")
        set_by[dotted] = f"--set {text_override}"

    def source_of(dotted: str) -> str:
        # an error at or below an overridden key is the override's fault, not the file's
        hits = [k for k in set_by if dotted == k or dotted.startswith(k + ".") or dotted.startswith(k + "[")]
        return set_by[max(hits, key=len)] if hits else source

    config = convert(RunConfig, raw, "", source_of)
    return with_dataset_defaults(config, source_of("data.name"))


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``"a.b[0].c=1e-3"`` -> ``(["a", "b", 0, "c"], 0.001)``; the value is typed by YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. train.lr=0.01")
    key, _, value_text = text.partition("=")
    keys: list[str | int] = []
    for part in key.strip().split("."):
        match = _INDEX.match(part)
        if match:
            if match.group(1):
                keys.append(match.group(1))
            keys.extend(int(i) for i in re.findall(r"\d+", match.group(2)))
        elif part.isdigit():
            keys.append(int(part))
        elif part:
            keys.append(part)
        else:
            raise ConfigError(f"--set {text}: empty component in key '{key}'")
    try:
        value = load_yaml(value_text) if value_text.strip() else None
    except DuplicateKeyError as error:
        raise ConfigError(f"--set {text}: duplicate key '{_dotted([*keys, error.key])}' in the value") from None
    except yaml.YAMLError:
        raise ConfigError(f"--set {text}: the value is not valid YAML") from None
    return keys, value


def _dotted(keys: Sequence[str | int]) -> str:
    out = ""
    for k in keys:
        out = f"{out}[{k}]" if isinstance(k, int) else (f"{out}.{k}" if out else k)
    return out


def _check_keys(keys: Sequence[str | int], source: str) -> None:
    """Walk the schema along ``keys``; raise on the first key the schema does not have."""
    tp: Any = RunConfig
    for depth, key in enumerate(keys):
        here = _dotted(keys[: depth + 1])
        parent = _dotted(keys[:depth])
        tp, _ = unwrap_optional(tp)
        options = variants(tp)
        if options is not None:
            if key == "kind":
                tp = str
                continue
            fields: dict[str, Any] = {}
            for cls in options:
                fields.update(field_types(cls))
            fields = {"kind": str, **fields}
        elif dataclasses.is_dataclass(tp):
            fields = field_types(tp)
        elif getattr(tp, "__origin__", None) is tuple:
            if not isinstance(key, int):
                fail(here, "this key is a list: use an index, e.g. " + _dotted([*keys[:depth], 0]), lambda _: source)
            tp = tp.__args__[0]
            continue
        else:
            fail(here, f"'{parent}' is a single value, not a section", lambda _: source)
        if not isinstance(key, str) or key not in fields:
            fail(here, "unknown key" + key_suggestion(parent, str(key), list(fields)), lambda _: source)
        tp = fields[key]


def _apply(raw: dict[str, Any], keys: Sequence[str | int], value: Any, source: str) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``value`` stored at ``keys`` (sections created as needed)."""
    raw = copy.deepcopy(raw)
    node: Any = raw
    for depth, key in enumerate(keys[:-1]):
        nxt = keys[depth + 1]
        if isinstance(key, int):
            if not isinstance(node, list) or key >= len(node):
                size = len(node) if isinstance(node, list) else 0
                raise ConfigError(f"{source}: {_dotted(keys[: depth + 1])}: index out of range (the list has {size})")
            child = node[key]
        else:
            child = node.get(key)
        if child is None:
            child = [] if isinstance(nxt, int) else {}
        elif isinstance(child, str) and not isinstance(nxt, int):
            child = {"kind": child}  # a tagged value written as its kind only (`lr_schedule: cosine`)
        node[key] = child
        node = child
    last = keys[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError(f"{source}: {_dotted(keys)}: index out of range")
    elif not isinstance(node, dict):
        raise ConfigError(f"{source}: {_dotted(keys[:-1])} is not a section")
    node[last] = value
    return raw


def with_dataset_defaults(config: RunConfig, source: str = "config") -> RunConfig:
    """Fill the model's unset input channels, image size and class count from the dataset."""
    from shrinkage.data import get_dataset_spec  # lazy: loading a config needs no data code otherwise

    try:
        spec = get_dataset_spec(config.data.name)
    except ConfigError as error:
        raise ConfigError(f"{source}: data.name: {error}") from None
    model = config.model
    filled = dataclasses.replace(
        model,
        in_channels=spec.in_channels if model.in_channels is None else model.in_channels,
        num_classes=spec.num_classes if model.num_classes is None else model.num_classes,
        image_size=spec.image_size if model.image_size is None else model.image_size,
    )
    return dataclasses.replace(config, model=filled)
