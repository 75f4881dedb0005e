"""A whole experiment: train -> compact (-> factorize) -> measure -> report.

The steps after training read only the run directory (``config.yaml`` and the
checkpoint), so ``shrinkage compact RUN_DIR`` and ``shrinkage report RUN_DIR`` can redo
them without retraining.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from shrinkage.compact import max_output_difference
from shrinkage.config import RunConfig, load_config, to_dict
from shrinkage.data import ImageDataset
from shrinkage.errors import ConfigError
from shrinkage.io import load_checkpoint, write_yaml
from shrinkage.train.compaction import (
    COMPACT_WEIGHTS,
    Compacted,
    compact_model,
    example_inputs,
    load_compact,
    save_compact,
)
from shrinkage.train.report import build_report
from shrinkage.train.setup import build_model, load_datasets, resolve_device, seed_everything
from shrinkage.train.trainer import CHECKPOINT, Trainer, check_same_training

log = logging.getLogger(__name__)

CONFIG = "config.yaml"


def default_run_dir(config: RunConfig) -> Path:
    """``out_dir/name``: where a run goes unless ``--out`` says otherwise."""
    return Path(config.out_dir) / config.name


def _write_config(config: RunConfig, run_dir: Path) -> None:
    """Write the resolved config, refusing to overwrite a different run's (resume safety)."""
    path = run_dir / CONFIG
    if (run_dir / CHECKPOINT).exists() and path.exists():
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        check_same_training(saved, config, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(path, to_dict(config))


def run_experiment(
    config: RunConfig,
    run_dir: str | Path,
    *,
    progress: bool = False,
    command: str | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``, compact it and write its report; returns the report."""
    run_dir = Path(run_dir)
    device = resolve_device(config.device)
    seed_everything(config.train.seed)
    train, test = load_datasets(config, device)
    model = build_model(config.model).to(device)
    trainer = Trainer(config, model, train, test, run_dir, progress=progress, on_epoch_end=on_epoch_end)
    _write_config(config, run_dir)  # after the Trainer accepted the rules: a bad config leaves no run dir
    result = trainer.fit()
    compacted = compact_model(model, config.compact, example_inputs(test.images))
    save_compact(run_dir, compacted)
    return build_report(config, run_dir, model, compacted, test, result.rows, command)


@dataclass(frozen=True)
class LoadedRun:
    """A run directory read back: its config, trained model, test split and epoch rows."""

    config: RunConfig
    model: nn.Module
    test: ImageDataset
    rows: list[dict[str, Any]]


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild the trained model of ``run_dir`` from its config and checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory not found: {run_dir}")
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not a run directory: it has no {CONFIG}")
    config = load_config(run_dir / CONFIG)
    device = resolve_device(config.device)
    checkpoint = load_checkpoint(run_dir / CHECKPOINT)
    if not checkpoint.state.get("finished"):
        log.warning("%s: training is not finished (%s, epoch %s); using that checkpoint",
                    run_dir, checkpoint.state.get("phase"), checkpoint.state.get("epoch"))
    seed_everything(config.train.seed)
    model = build_model(config.model).to(device)
    model.load_state_dict(checkpoint.model)
    _, test = load_datasets(config, device)
    return LoadedRun(config, model, test, list(checkpoint.state.get("rows", [])))


def compact_run(run_dir: str | Path) -> Compacted:
    """Redo the compaction of a trained run and save ``compact.safetensors``/``compact.json``."""
    run = load_run(run_dir)
    compacted = compact_model(run.model, run.config.compact, example_inputs(run.test.images))
    save_compact(Path(run_dir), compacted)
    return compacted


def report_run(run_dir: str | Path, command: str | None = None) -> dict[str, Any]:
    """Redo the measurements and the report of a trained run.

    The report measures the compact model the run saved (``compact.safetensors``, the
    file a user ships), rebuilt inside a fresh model; a run without one (interrupted
    before compaction) is compacted again, which is deterministic."""
    run = load_run(run_dir)
    run_dir = Path(run_dir)
    if (run_dir / COMPACT_WEIGHTS).is_file():
        compacted = load_compact(run_dir, build_model(run.config.model))  # rebuilt on the CPU...
        compacted.model.to(next(run.model.parameters()).device)  # ...then moved with everything in it
        if not compacted.factorized:  # exact by design: check the file against the dense model again
            check = example_inputs(run.test.images)
            diff = max_output_difference(run.model.eval(), compacted.model, (check,))
            compacted = Compacted(compacted.model, diff, f"{check.shape[0]} test images", False)
    else:
        compacted = compact_model(run.model, run.config.compact, example_inputs(run.test.images))
    return build_report(run.config, run_dir, run.model, compacted, run.test, run.rows, command)
