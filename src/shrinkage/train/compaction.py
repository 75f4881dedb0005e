"""Compaction step of a run: compact (and optionally factorize) a trained model, save it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import shrinkage
from shrinkage.compact import max_output_difference
from shrinkage.config import CompactConfig
from shrinkage.errors import DataError
from shrinkage.io import write_json
from shrinkage.metrics import count_parameters

log = logging.getLogger(__name__)

COMPACT_WEIGHTS = "compact.safetensors"
COMPACT_LAYOUT = "compact.json"
#: test images the compacted model is checked on (compact() raises if outputs differ)
CHECK_SAMPLES = 32


@dataclass(frozen=True)
class Compacted:
    """The compact model and how exactly it reproduces the dense one."""

    model: nn.Module
    max_abs_diff: float
    checked_on: str
    factorized: bool


def compact_model(dense: nn.Module, config: CompactConfig, check_inputs: Tensor) -> Compacted:
    """Remove zeroed structures, then (if configured) factorize the survivors.

    Compaction runs first: it is exact and works on the plain Conv2d/Linear layers it
    knows, and the SVD of a compacted layer has the same non-zero singular values as
    that of the zero-padded original, so factorizing afterwards loses nothing and
    costs smaller SVDs. ``max_abs_diff`` measures compaction alone (factorization is
    lossy by design; its effect shows in the compact model's accuracy).
    """
    dense.eval()
    compact = shrinkage.compact(dense, (check_inputs,), config.options())
    diff = max_output_difference(dense, compact, (check_inputs,))
    if config.factorize:
        compact = shrinkage.factorize(compact, config.energy, layers=config.factorize_layers or None)
    log.info("compact model: %d -> %d parameters", count_parameters(dense), count_parameters(compact))
    return Compacted(compact, float(diff), f"{check_inputs.shape[0]} test images", config.factorize)


def layout(model: nn.Module) -> list[dict[str, Any]]:
    """Every module that owns parameters: name, type and the shape of each parameter."""
    rows = []
    for name, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        if params:
            rows.append({
                "name": name,
                "type": type(module).__name__,
                "shapes": {k: list(p.shape) for k, p in params.items()},
            })
    return rows


def save_compact(run_dir: Path, compacted: Compacted) -> None:
    """Write ``compact.safetensors`` (``shrinkage.save``: reload it with ``shrinkage.load(path,
    fresh_model)``) and ``compact.json`` (a readable summary), atomically."""
    shrinkage.save(compacted.model, run_dir / COMPACT_WEIGHTS)
    write_json(run_dir / COMPACT_LAYOUT, {
        "params": count_parameters(compacted.model),
        "factorized": compacted.factorized,
        "max_abs_diff": compacted.max_abs_diff,
        "checked_on": compacted.checked_on,
        "modules": layout(compacted.model),
    })
    log.info("saved %s and %s", run_dir / COMPACT_WEIGHTS, run_dir / COMPACT_LAYOUT)


def example_inputs(images: Tensor, n: int = CHECK_SAMPLES) -> Tensor:
    """The first ``n`` images of a split: real inputs exercise real activation patterns."""
    with torch.no_grad():
        return images[:n].clone()


def load_compact(run_dir: Path, base: nn.Module) -> Compacted:
    """The compact model saved in ``run_dir``, rebuilt inside ``base`` (a freshly built model
    of the run's architecture), with the exactness figures recorded when it was saved."""
    path = run_dir / COMPACT_LAYOUT
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    try:
        figures = (float(summary["max_abs_diff"]), str(summary["checked_on"]), bool(summary["factorized"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: missing or malformed key {exc}") from exc
    model = shrinkage.load(run_dir / COMPACT_WEIGHTS, base)
    return Compacted(model.eval(), *figures)

