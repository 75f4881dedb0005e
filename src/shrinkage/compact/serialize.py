"""``save`` / ``load``: a compacted or factorized model as safetensors + a JSON layout.

The file is one ``.safetensors`` file: the tensors of the model's state dict, and in
its metadata header the JSON layout of every layer (see :mod:`shrinkage.compact.layout`).
``load(path, base_model)`` rebuilds the changed layers inside a freshly constructed
original model and loads the tensors; no pickle is involved at any point.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from shrinkage.compact.layout import describe, rebuild
from shrinkage.errors import DataError, ShrinkageError
from shrinkage.io.atomic import atomic_path

FORMAT = "shrinkage.model/1"


def save(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` (any model whose changed layers have a layout codec) to ``path``."""
    path = Path(path)
    state, aliases = _unshared(model.state_dict())
    metadata = {"format": FORMAT, "base": type(model).__name__, "layout": json.dumps(describe(model)),
                "aliases": json.dumps(aliases)}  # fmt: skip
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def _unshared(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors safetensors can write (it refuses two names for one memory), plus the
    aliases: tied weights (a language model's input and output embedding) are stored once
    and the second name points at the first."""
    out: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
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


def load(path: str | Path, base_model: nn.Module) -> nn.Module:
    """Rebuild the saved model from ``base_model`` (a fresh instance of the original
    architecture, modified in place and returned) and the file's tensors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise DataError(f"{path} is not a safetensors file: {exc}") from exc
    if metadata.get("format") != FORMAT:
        raise DataError(f"{path} was not written by shrinkage.save (format {metadata.get('format')!r})")
    if metadata.get("base") != type(base_model).__name__:
        raise ShrinkageError(f"{path} holds a {metadata.get('base')}, but the base model is a {type(base_model).__name__}")
    rebuild(base_model, json.loads(metadata["layout"]))
    state = load_file(str(path))
    aliases = json.loads(metadata.get("aliases", "{}"))
    for name, source in aliases.items():
        if source not in state:
            raise DataError(f"{path}: tensor '{name}' is stored as '{source}', which the file lacks")
        state[name] = state[source]
    # modules check the version of the layout their tensors were saved in (MNASNet refuses
    # none); the file was written from this very architecture, so its versions are the base's
    state = OrderedDict(state)
    state._metadata = getattr(base_model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    missing, unexpected = base_model.load_state_dict(state, strict=False)
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise ShrinkageError(f"{path} does not fit the rebuilt {type(base_model).__name__}: "
                             f"{'missing' if missing else 'unexpected'} tensor '{key}'")
    return base_model
