"""``save`` / ``load``: a compacted or factorized model as safetensors + a JSON layout.

The file is one ``.safetensors`` file: the tensors of the model's state dict, and in
its metadata header the JSON layout of every layer (see :mod:`shrinkage.compact.layout`).
``load(path, base_model)`` rebuilds the changed layers inside a freshly constructed
original model and loads the tensors; no pickle is involved at any point.

``load`` trusts nothing in the file. In order: the file is readable safetensors; its
metadata and layout match their schemas; every layout entry names a place in the base
model, with a layer type and sizes that fit the base layer there; the layers are built
(outside the base model); the stored tensor names and shapes match them; the tensors'
types and index values are valid. Only then is the base model changed. Every failure is
one :class:`~shrinkage.errors.ShrinkageError` line naming the file and the key, entry or
tensor at fault.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import SymInt, Tensor, nn

from shrinkage.compact.attention_types import sync_head_counts
from shrinkage.compact.layout import LayoutEntry, describe, describe_tensors, parse_layout, parse_tensor_shapes
from shrinkage.compact.layout_plan import build, index_bounds, install, plan_rebuild, resize_tensors, resized_tensors
from shrinkage.compact.layout_schema import LayoutError, MapOf, Record, SchemaMismatch, Text, parse_json
from shrinkage.compact.saved_tensors import (
    adopt_dtypes,
    check_dtypes,
    check_header,
    check_indices,
    expected_modules,
    expected_tensors,
)
from shrinkage.errors import DataError, ShrinkageError, UnsupportedModuleError
from shrinkage.io.atomic import atomic_path

FORMAT = "shrinkage.model/1"
_FORMAT_FAMILY = "shrinkage.model/"
#: the safetensors metadata ``save`` writes; every value there is a string. ``tensors``: the
#: shapes of the free tensors (see :func:`~shrinkage.compact.layout.describe_tensors`),
#: written when the model has any; files without it load as before
_METADATA = Record(
    {"format": Text(), "base": Text(), "layout": Text(), "aliases": Text(), "tensors": Text()},
    frozenset({"aliases", "tensors"}),
)
_ALIASES = MapOf(Text(parts=64), Text(parts=64))


def save(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (any model whose changed layers have a layout codec) to ``path``."""
    path = Path(path)
    state, aliases = _unshared(model.state_dict())
    metadata = {"format": FORMAT, "base": type(model).__name__, "layout": json.dumps(describe(model)),
                "aliases": json.dumps(aliases)}  # fmt: skip
    tensors = describe_tensors(model)
    if tensors:
        metadata["tensors"] = json.dumps(tensors)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def _unshared(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors safetensors can write (it refuses two names for one memory), plus the
    aliases: tied weights (a language model's input and output embedding) are stored once
    and the second name points at the first."""
    out: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int | SymInt, tuple[int, ...], tuple[int, ...]], str] = {}
    storages: set[int] = set()
    for name, tensor in state.items():
        tensor = tensor.detach()
        ptr = tensor.untyped_storage().data_ptr()
        key = (ptr, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        shared = tensor.numel() > 0 and ptr in storages  # overlaps another tensor without being it
        storages.add(ptr)
        out[name] = (tensor.clone() if shared else tensor).contiguous().cpu()
    return out, aliases


@dataclass(frozen=True)
class SavedModel:
    """The checked metadata of a saved model file."""

    layout: dict[str, LayoutEntry]
    aliases: dict[str, str]
    shapes: dict[str, tuple[int, ...]]  # stored tensor name -> shape, from the header
    tensors: dict[str, tuple[int, ...]]  # free tensor name -> shape, from the metadata


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a model file")
    if not path.is_file():
        raise DataError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118 (a handle, not a dict)
    except (SafetensorError, OSError, ValueError) as exc:  # a damaged, truncated or unreadable file
        raise DataError(f"{path} is not a readable safetensors file: {_first_line(exc)}") from None
    return metadata, shapes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _parse_metadata(
    path: Path, metadata: dict[str, str], base_model: nn.Module
) -> tuple[dict[str, LayoutEntry], dict[str, str], dict[str, tuple[int, ...]]]:
    try:
        _METADATA.check(metadata, "metadata")
    except SchemaMismatch as exc:
        if "format" not in metadata:
            raise DataError(f"{path} was not written by shrinkage.save (its metadata has no format)") from None
        raise LayoutError(f"{path}: {exc}") from None
    found = metadata["format"]
    if found != FORMAT:
        if found.startswith(_FORMAT_FAMILY):
            raise DataError(f"{path} has format version {found!r}; this version of shrinkage reads {FORMAT!r}")
        raise DataError(f"{path} was not written by shrinkage.save (format {found!r})")
    if metadata["base"] != type(base_model).__name__:
        raise LayoutError(f"{path} holds a {metadata['base']}, but the base model is a {type(base_model).__name__}")
    try:
        layout = parse_layout(metadata["layout"], "layout")
        aliases = parse_json(metadata.get("aliases", "{}"), "aliases")
        _ALIASES.check(aliases, "aliases")
        tensors = parse_tensor_shapes(metadata.get("tensors", "{}"), "tensors")
    except SchemaMismatch as exc:
        raise LayoutError(f"{path}: {exc}") from None
    assert isinstance(aliases, dict)  # checked by _ALIASES
    return layout, aliases, tensors


def _read_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as exc:  # changed on disk, or a dtype torch lacks
        raise DataError(f"{path}: cannot read its tensors: {_first_line(exc)}") from None


def load(path: str | Path, base_model: nn.Module) -> nn.Module:
    """Rebuild the saved model from ``base_model`` (a fresh instance of the original
    architecture, modified in place and returned) and the file's tensors.

    Floating-point tensors keep the precision they were saved in. Nothing in the base
    model changes unless the whole file checks out."""
    if not isinstance(base_model, nn.Module):
        raise UnsupportedModuleError(f"load: the base model must be an nn.Module, got {type(base_model).__name__}")
    path = Path(path)
    source = str(path)
    metadata, shapes = _read_header(path)
    layout, aliases, tensors = _parse_metadata(path, metadata, base_model)
    rebuild_and_load(base_model, layout, shapes, lambda expected: aliases, lambda: _read_tensors(path), source, source,
                     tensors)  # fmt: skip
    return base_model


def rebuild_and_load(
    base_model: nn.Module,
    layout: dict[str, LayoutEntry],
    shapes: dict[str, tuple[int, ...]],
    tied: Callable[[dict[str, Tensor]], dict[str, str]],
    read_state: Callable[[], dict[str, Tensor]],
    layout_source: str,
    tensor_source: str,
    free_tensors: dict[str, tuple[int, ...]] | None = None,
) -> None:
    """Rebuild the layers ``layout`` describes inside ``base_model`` and load the stored
    tensors (``shapes``: their stored shapes; ``tied(expected tensors)``: each name stored
    only under another tied one -> that one; ``read_state`` reads them). ``free_tensors``:
    the saved shapes of tensors of modules without layout codec, which compaction may have
    sliced (a layer scale, a position embedding). Everything is checked before ``base_model``
    changes; errors name ``layout_source`` (the layout's file) or ``tensor_source``."""
    plan = plan_rebuild(base_model, layout, layout_source)
    made = build(plan, layout_source)
    expected = expected_tensors(base_model, made)
    resized = resized_tensors(base_model, made, expected, free_tensors or {}, layout_source)
    for name, shape in resized.items():  # what the file must hold for them
        expected[name] = expected[name].new_empty(shape, device="meta")
    aliases = tied(expected)
    check_header(expected, shapes, aliases, tensor_source)
    state = read_state()
    if set(state) != set(shapes):
        raise DataError(f"{tensor_source} changed while it was being read")
    for name, target in aliases.items():
        state[name] = state[target]
    check_dtypes(expected, state, expected_modules(base_model, made), tensor_source)
    check_indices(state, index_bounds(base_model, plan, made), tensor_source)

    install(base_model, made)
    resize_tensors(base_model, resized)
    adopt_dtypes(base_model, state)
    # modules check the version of the layout their tensors were saved in (MNASNet refuses
    # none); the file was written from this very architecture, so its versions are the base's
    ordered = OrderedDict(state)
    ordered._metadata = getattr(base_model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    try:
        missing, unexpected = base_model.load_state_dict(ordered, strict=False)
    except RuntimeError as exc:  # checked above; a module with its own loading rules may still refuse
        raise ShrinkageError(f"{tensor_source} does not load into the rebuilt {type(base_model).__name__}: "
                             f"{_first_line(exc)}") from None  # fmt: skip
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise ShrinkageError(
            f"{tensor_source} does not fit the rebuilt {type(base_model).__name__}: "
            f"{'missing' if missing else 'unexpected'} tensor '{key}'"
        )
    sync_head_counts(base_model)  # attention modules whose heads were removed read their new counts
