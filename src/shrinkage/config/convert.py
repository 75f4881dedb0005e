"""Plain YAML data <-> typed config dataclasses, with errors that name the dotted key.

Conversion is driven by the dataclasses' type hints, so adding a field to a config
class is all it takes to make it loadable, overridable and written back. A union of
dataclasses that each define ``KIND`` is a *tagged union*: YAML picks the variant
with ``kind: <name>`` (or just the name as a string when no other field is needed).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any, get_args, get_origin, get_type_hints

from shrinkage.config.fields import FieldError
from shrinkage.errors import ConfigError

#: maps a dotted key to where its value came from (a file name or a ``--set`` override)
SourceOf = Callable[[str], str]


def join(path: str, key: str | int) -> str:
    """``train`` + ``lr`` -> ``train.lr``; ``rules`` + 0 -> ``rules[0]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def fail(path: str, message: str, source_of: SourceOf) -> typing.NoReturn:
    """Raise the one-line error: ``<source>: <dotted key>: <message>``."""
    raise ConfigError(f"{source_of(path)}: {path or '(top level)'}: {message}")


def suggestion(word: str, known: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest known word, else the list of known words."""
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (known: {', '.join(known)})" if known else ""


def key_suggestion(path: str, key: str, known: list[str]) -> str:
    """Like :func:`suggestion` but compares bare key names and shows the full dotted key.

    Comparing full paths would let the shared prefix (``train.``) make any typo look close.
    """
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{join(path, close[0])}'?)"
    return f" (known keys here: {', '.join(known)})"


def is_union(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


def is_tagged(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(getattr(tp, "KIND", None), str)


def variants(tp: Any) -> list[type] | None:
    """The variant classes if ``tp`` is a tagged union, else ``None``."""
    if not is_union(tp):
        return None
    args = [a for a in get_args(tp) if a is not type(None)]
    return args if args and all(is_tagged(a) for a in args) else None


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; other types unchanged."""
    if is_union(tp) and type(None) in get_args(tp):
        rest = [a for a in get_args(tp) if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def field_types(cls: type) -> dict[str, Any]:
    """Init fields of a dataclass and their resolved types, in declaration order."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def convert(tp: Any, value: Any, path: str, source_of: SourceOf) -> Any:
    """Convert plain YAML ``value`` to type ``tp``; ``path`` is its dotted key for errors."""
    tp, optional = unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        fail(path, "a value is required, got null", source_of)
    tagged = variants(tp)
    if tagged is not None:
        return _convert_tagged(tagged, value, path, source_of)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, path, source_of)
    if get_origin(tp) is tuple:
        (item,) = [a for a in get_args(tp) if a is not Ellipsis]
        items = value if isinstance(value, (list, tuple)) else [value]  # a scalar is a 1-tuple
        return tuple(convert(item, v, join(path, i), source_of) for i, v in enumerate(items))
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _convert_enum(tp, value, path, source_of)
    return _convert_scalar(tp, value, path, source_of)


def _convert_scalar(tp: Any, value: Any, path: str, source_of: SourceOf) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail(path, f"expected true or false, got {_describe(value)}", source_of)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail(path, f"expected an integer, got {_describe(value)}", source_of)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads `1e-3` (no dot) as a string; accept what float() accepts
            try:
                return float(value)
            except ValueError:
                pass
        fail(path, f"expected a number, got {_describe(value)}", source_of)
    if tp is str:
        if isinstance(value, str):
            return value
        fail(path, f"expected a string, got {_describe(value)}", source_of)
    raise TypeError(f"config field {path} has an unsupported type {tp!r}")  # a bug in a config class


def _convert_enum(tp: type[Enum], value: Any, path: str, source_of: SourceOf) -> Enum:
    known = list(getattr(tp, "accepted", lambda: [m.value for m in tp])())
    if isinstance(value, str):
        try:
            return tp(value)
        except ValueError:
            fail(path, f"unknown value '{value}'" + suggestion(value, known), source_of)
    fail(path, f"expected one of {', '.join(known)}, got {_describe(value)}", source_of)


def _convert_dataclass(cls: type, value: Any, path: str, source_of: SourceOf) -> Any:
    if not isinstance(value, dict):
        fail(path, f"expected a mapping of keys, got {_describe(value)}", source_of)
    fields = field_types(cls)
    for key in value:
        if key not in fields:
            fail(join(path, str(key)), "unknown key" + key_suggestion(path, str(key), list(fields)), source_of)
    kwargs = {k: convert(fields[k], v, join(path, k), source_of) for k, v in value.items()}
    required = [f.name for f in dataclasses.fields(cls) if f.init and _is_required(f)]
    for name in required:
        if name not in kwargs:
            fail(join(path, name), "missing required key", source_of)
    try:
        return cls(**kwargs)
    except FieldError as error:
        fail(join(path, error.field), error.reason, source_of)


def _is_required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _convert_tagged(options: list[type], value: Any, path: str, source_of: SourceOf) -> Any:
    kinds = {cls.KIND: cls for cls in options}  # type: ignore[attr-defined]
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        fail(path, f"expected a mapping with 'kind' ({', '.join(kinds)}), got {_describe(value)}", source_of)
    if "kind" not in value:
        fail(join(path, "kind"), f"missing; one of {', '.join(kinds)}", source_of)
    kind = value["kind"]
    if kind not in kinds:
        fail(join(path, "kind"), f"unknown kind {kind!r}" + suggestion(str(kind), list(kinds)), source_of)
    rest = {k: v for k, v in value.items() if k != "kind"}
    return _convert_dataclass(kinds[kind], rest, path, source_of)


def to_dict(config: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a config: what ``load_config`` reads back."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        out: dict[str, Any] = {}
        if is_tagged(type(config)):
            out["kind"] = type(config).KIND  # type: ignore[attr-defined]
        for f in dataclasses.fields(config):
            if f.init:
                out[f.name] = to_dict(getattr(config, f.name))
        return out
    if isinstance(config, Enum):
        return config.value
    if isinstance(config, (tuple, list)):
        return [to_dict(v) for v in config]
    return config
