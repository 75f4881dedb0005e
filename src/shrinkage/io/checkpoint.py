"""Checkpoints without pickle: one safetensors file, plus a JSON copy for people.

``checkpoint.safetensors`` holds

* the model's ``state_dict`` under ``model/<name>``;
* every tensor found in ``state`` (optimizer momentum buffers, RNG states, ...) under
  ``state/<n>``;
* in its header metadata, ``state`` itself as JSON with placeholders for those tensors
  (step counts, hyperparameters, epoch, phase, metrics rows).

Keeping the JSON inside the safetensors file makes a checkpoint ONE file replaced by
one atomic rename: two files renamed one after the other could be left out of step
by a crash between the renames. ``checkpoint.json`` is written afterwards as a
readable copy of the same JSON; loading never trusts it.

The metadata also holds a SHA-256 of every tensor (name, dtype, shape, bytes) and of
the rest of the metadata. safetensors itself only checks that the header is consistent,
so a flipped bit in the weights would otherwise load silently and a resumed run would
continue from damaged weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from shrinkage.errors import DataError
from shrinkage.io.atomic import atomic_path, remove_stale_temp_files, write_json
from shrinkage.io.tree import clone_state, decode, encode

log = logging.getLogger(__name__)

FORMAT = "shrinkage-checkpoint"
#: version 2 added the checksum; version 1 files (no checksum) are still read
VERSION = "2"
_READABLE = ("1", "2")
_MODEL, _STATE, _CHECKSUM = "model/", "state", "sha256"
#: checkpoints already warned about for lacking a checksum (once per file and process)
_unverified_warned: set[Path] = set()


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`load_checkpoint` returns: model tensors and the decoded state tree."""

    model: dict[str, Tensor]
    state: dict[str, Any]


def sidecar(path: Path) -> Path:
    """The readable JSON copy next to a checkpoint: ``x.safetensors`` -> ``x.json``."""
    return path.with_suffix(".json")


def save_checkpoint(path: str | Path, model_state: Mapping[str, Tensor], state: Mapping[str, Any]) -> None:
    """Atomically write ``model_state`` and ``state`` (any tree of JSON values and tensors)."""
    path = Path(path)
    remove_stale_temp_files(path.parent)
    tensors = {_MODEL + k: v for k, v in clone_state(model_state).items()}
    encoded = encode(dict(state), _STATE, tensors)
    metadata = {"format": FORMAT, "version": VERSION, "state": json.dumps(encoded, allow_nan=False)}
    metadata[_CHECKSUM] = checksum(tensors, metadata)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    write_json(sidecar(path), encoded)
    log.debug("saved checkpoint %s (%d tensors)", path, len(tensors))


def checksum(tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """SHA-256 hex digest of ``tensors`` (sorted by name) and ``metadata`` (less the checksum)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(_payload(tensor))
    for key in sorted(k for k in metadata if k != _CHECKSUM):
        digest.update(f"{key}\0{metadata[key]}\0".encode())
    return digest.hexdigest()


def _payload(tensor: Tensor) -> memoryview:
    # the raw bytes as safetensors stores them; viewed as uint8 so any dtype (bfloat16, bool) works
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def load_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; tensors land on ``device``.

    Raises :class:`DataError` if the file is missing, unreadable, or does not match
    its checksum (it says *corrupted* then, and names the file).
    """
    path = Path(path)
    remove_stale_temp_files(path.parent)
    metadata = _read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, error) from None
    _verify(path, tensors, metadata)
    encoded = _state_json(path, metadata)
    if device != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    model = {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    return Checkpoint(model=model, state=decode(encoded, tensors))


def read_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """The state JSON of a checkpoint without reading its tensors (not checksum-verified).

    Cheap, for questions such as "is this run finished?"; tensors in it are
    ``{"__tensor__": key}`` placeholders. Use :func:`load_checkpoint` to resume.
    """
    path = Path(path)
    return _state_json(path, _read_metadata(path))


def _read_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, error) from None


def _unreadable(path: Path, error: Exception) -> DataError:
    reason = " ".join(str(error).split())
    return DataError(f"checkpoint {path} is corrupted or truncated (unreadable: {reason})")


def _state_json(path: Path, metadata: Mapping[str, str]) -> dict[str, Any]:
    if metadata.get("format") != FORMAT:
        raise DataError(f"{path} is not a shrinkage checkpoint (format {metadata.get('format')!r})")
    if metadata.get("version") not in _READABLE:
        raise DataError(f"checkpoint {path} has version {metadata.get('version')!r}; "
                        f"this shrinkage reads {', '.join(_READABLE)}")
    try:
        state = json.loads(metadata["state"])
    except (KeyError, json.JSONDecodeError):
        raise DataError(f"checkpoint {path} has no readable state metadata") from None
    if not isinstance(state, dict):
        raise DataError(f"checkpoint {path} has no readable state metadata")
    return state


def _verify(path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]) -> None:
    """Raise if the checksum does not match; warn (once) about a file written without one."""
    expected = metadata.get(_CHECKSUM)
    if expected is None:
        if metadata.get("format") != FORMAT:
            return  # not one of ours at all: the format check says so
        if metadata.get("version") != "1":  # every later version writes one: it was damaged
            raise DataError(f"checkpoint {path} is corrupted (its checksum is missing); "
                            "delete it to train the run again from the start")
        if path not in _unverified_warned:
            _unverified_warned.add(path)
            log.warning("checkpoint %s has no checksum (written by an older shrinkage): "
                        "loading it unverified", path)
        return
    if checksum(tensors, metadata) != expected:
        raise DataError(f"checkpoint {path} is corrupted (checksum mismatch); "
                        "delete it to train the run again from the start")
