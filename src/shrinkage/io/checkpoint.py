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
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from shrinkage.errors import DataError
from shrinkage.io.atomic import atomic_path, write_json
from shrinkage.io.tree import clone_state, decode, encode

log = logging.getLogger(__name__)

FORMAT = "shrinkage-checkpoint"
VERSION = "1"
_MODEL, _STATE = "model/", "state"


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
    tensors = {_MODEL + k: v for k, v in clone_state(model_state).items()}
    encoded = encode(dict(state), _STATE, tensors)
    text = json.dumps(encoded, allow_nan=False)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": VERSION, "state": text})
    write_json(sidecar(path), encoded)
    log.debug("saved checkpoint %s (%d tensors)", path, len(tensors))


def load_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; tensors land on ``device``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as error:
        raise DataError(f"checkpoint {path} is unreadable or truncated: {error}") from None
    if metadata.get("format") != FORMAT:
        raise DataError(f"{path} is not a shrinkage checkpoint (format {metadata.get('format')!r})")
    if metadata.get("version") != VERSION:
        raise DataError(f"checkpoint {path} has version {metadata.get('version')!r}; this shrinkage reads {VERSION}")
    try:
        encoded = json.loads(metadata["state"])
    except (KeyError, json.JSONDecodeError):
        raise DataError(f"checkpoint {path} has no readable state metadata") from None
    model = {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    return Checkpoint(model=model, state=decode(encoded, tensors))
