"""A whole experiment: train -> compact (-> factorize) -> measure -> report.

The steps after training read only the run directory (``config.yaml`` and the
checkpoint), so ``shrinkage compact RUN_DIR`` and ``shrinkage report RUN_DIR`` can redo
them without retraining.

Started by torchrun, every process trains (:mod:`shrinkage.train.distributed`); the
process group is left after training, and rank 0 alone compacts, selects under a
target and reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from shrinkage.compact import max_output_difference
from shrinkage.config import RunConfig, load_config, to_dict
from shrinkage.config.loader import load_yaml
from shrinkage.data import ImageDataset
from shrinkage.errors import ConfigError
from shrinkage.io import load_checkpoint, read_checkpoint_state, reporting_write_errors, write_yaml
from shrinkage.train.compaction import (
    COMPACT_WEIGHTS,
    Compacted,
    compact_model,
    example_inputs,
    load_compact,
    save_compact,
)
from shrinkage.train import distributed
from shrinkage.train.report import build_report
from shrinkage.train.setup import build_model, load_datasets, resolve_device, seed_everything
from shrinkage.train.trainer import (
    CHECKPOINT,
    RESUME_MAY_CHANGE,
    Trainer,
    check_same_training,
    first_difference,
)

log = logging.getLogger(__name__)

CONFIG = "config.yaml"


def default_run_dir(config: RunConfig) -> Path:
    """``out_dir/name``: where a run goes unless ``--out`` says otherwise."""
    return Path(config.out_dir) / config.name


#: keys a rerun into a finished run may change: where the data is, eval batching, and
#: out_dir (``--out`` replaces it); anything else would mix two configs in one directory
RERUN_MAY_CHANGE = RESUME_MAY_CHANGE | {"out_dir"}


def _write_config(config: RunConfig, run_dir: Path) -> None:
    """Write the resolved config, refusing to overwrite a different run's (resume safety)."""
    path = run_dir / CONFIG
    with reporting_write_errors("run directory", run_dir):
        if (run_dir / CHECKPOINT).exists() and path.exists():
            # checked before anything is written: a refused run leaves the old config.yaml as it was
            check_same_training(_saved_config(path, raw=True), config, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(path, to_dict(config))


def _saved_config(path: Path, *, raw: bool = False) -> dict[str, Any]:
    """The config a run directory saved, as plain data.

    Unless ``raw``, it is read through the schema first, so that a section an older
    shrinkage did not write compares equal to its defaults.
    """
    if not raw:
        try:
            return to_dict(load_config(path))
        except ConfigError:
            pass  # no longer valid under the schema: compare what the file says
    try:
        saved = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        reason = " ".join(str(error).split())
        raise ConfigError(f"{path}: cannot read the saved config of this run ({reason}); use another --out") from None
    return saved if isinstance(saved, dict) else {}


def _refuse_changed_rerun(config: RunConfig, run_dir: Path) -> None:
    """Refuse to redo a *finished* run with other settings: it would overwrite its results.

    Compaction and the report would be redone with the new settings over the old
    run's outputs. An identical config is fine (it re-compacts and re-reports); an
    unfinished run may change compact/report settings, and the trainer checks the rest.
    """
    path, checkpoint = run_dir / CONFIG, run_dir / CHECKPOINT
    with reporting_write_errors("run directory", run_dir):  # e.g. a directory we may not list
        if not (path.is_file() and checkpoint.is_file()):
            return
    if not read_checkpoint_state(checkpoint).get("finished"):
        return
    diff = first_difference(_saved_config(path), to_dict(config), ignore=RERUN_MAY_CHANGE)
    if diff is None:
        return
    advice = "train into another directory with --out"
    if diff.startswith(("compact.", "report.")):
        advice += (f", or edit {path} and run 'shrinkage compact {run_dir}' and 'shrinkage report {run_dir}' "
                   "to redo only those steps")
    raise ConfigError(f"{run_dir} holds a finished run with other settings ({diff}) that this run would "
                      f"overwrite; {advice}")


def _check_latency_batch_fits(model: nn.Module, image_shape: tuple[int, ...], config: RunConfig) -> None:
    """One no-grad forward pass at the largest ``report.latency_batch_sizes``, before training.

    The report times the models at these batch sizes after training; a size that does
    not fit in memory would otherwise fail only then, with all the training done.
    """
    sizes = config.report.latency_batch_sizes
    if not sizes:
        return
    size = max(sizes)
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((size, *image_shape), device=device))
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise ConfigError(
            f"report.latency_batch_sizes: the model cannot run a batch of {size} on {device} ({reason}); "
            "use smaller latency batch sizes"
        ) from None
    finally:
        model.train(was_training)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # hand back what the pass reserved before training starts


def run_experiment(
    config: RunConfig,
    run_dir: str | Path,
    *,
    progress: bool = False,
    command: str | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``, compact it and write its report; returns the report.

    Under torchrun every process trains; rank 0 then does the rest and returns the
    report, the other ranks return ``{}`` as soon as training is done.
    """
    run_dir = Path(run_dir)
    world = distributed.launched()
    device = distributed.local_device(resolve_device(config.device), world)
    _refuse_changed_rerun(config, run_dir)  # read-only; before the group forms, so before rank 0 writes
    with distributed.process_group(world, device) as world:
        seed_everything(config.train.seed)
        train, test = load_datasets(config, device)
        model = build_model(config.model).to(device)
        trainer = Trainer(config, model, train, test, run_dir, progress=progress, on_epoch_end=on_epoch_end)
        _check_latency_batch_fits(model, tuple(test.images.shape[1:]), config)
        if world.is_main:
            _write_config(config, run_dir)  # after every check: a refused config leaves no run dir
        result = trainer.fit()
    if not world.is_main:
        return {}
    compacted = compact_model(model, config.compact, example_inputs(test.images))
    with reporting_write_errors("compact model into", run_dir):  # the disk may fill up after training
        save_compact(run_dir, compacted)
    _meet_target(config, run_dir, model, train, test, command)
    with reporting_write_errors("report into", run_dir):
        return build_report(config, run_dir, model, compacted, test, result.rows, command)


def _meet_target(
    config: RunConfig, run_dir: Path, model: nn.Module, train: ImageDataset, test: ImageDataset, command: str | None
) -> None:
    """With a ``target:`` block: select under the budget and fine-tune into the run directory
    (``target.safetensors``, ``target.json``, ``target.md``), before the report that shows them."""
    if config.target is None:
        return
    from shrinkage.train.compress import compress  # compress builds on load_run from this module

    compress(config, model, train, test, run_dir, command=command)


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


def load_saved(model_file: str | Path, config_file: str | Path, overrides: list[str] | None = None) -> LoadedRun:
    """A model written by :func:`shrinkage.save` (dense, compacted or factorized) read back
    onto the architecture of ``config_file``, with that config's test split: what
    :func:`load_run` gives for a run directory, for a model that has no run directory
    (a committed result, or a model trained elsewhere and saved)."""
    import shrinkage  # the package imports this module: import at call time

    model_file, config_file = Path(model_file), Path(config_file)
    if not model_file.is_file():
        raise ConfigError(f"model file not found: {model_file}")
    config = load_config(config_file, overrides or [])
    device = resolve_device(config.device)
    seed_everything(config.train.seed)  # the built model's initial weights are all replaced; seeded anyway
    model = shrinkage.load(model_file, build_model(config.model)).to(device)
    _, test = load_datasets(config, device)
    return LoadedRun(config, model, test, [])


def source_config(source: str | Path, config: str | Path | None = None, overrides: list[str] | None = None) -> Path:
    """The config file that describes ``source``: a run directory's own ``config.yaml``, or
    ``config`` for a model file written by :func:`shrinkage.save`. One-line errors for a
    missing source, a model file without ``config`` and ``config``/``overrides`` given
    with a run directory (whose own config is used)."""
    source = Path(source)
    if not source.exists():
        raise ConfigError(f"{source}: no such run directory or model file")
    if source.is_file():
        if config is None:
            raise ConfigError(f"{source} is a model file: give the config it was trained with (--config CONFIG.yaml)")
        return Path(config)
    if config is not None or overrides:
        raise ConfigError(f"--config and --set apply to a model file; {source} is read as a run directory, "
                          "whose own config.yaml is used")  # fmt: skip
    return source / CONFIG


def load_source(source: str | Path, config: str | Path | None = None, overrides: list[str] | None = None) -> LoadedRun:
    """:func:`load_run` of a run directory, or :func:`load_saved` of a model file with its
    ``config`` (and ``overrides``, as ``--set``)."""
    config_file = source_config(source, config, overrides)
    return load_saved(source, config_file, overrides) if Path(source).is_file() else load_run(source)


def compact_run(run_dir: str | Path) -> Compacted:
    """Redo the compaction of a trained run and save ``compact.safetensors``/``compact.json``."""
    run = load_run(run_dir)
    compacted = compact_model(run.model, run.config.compact, example_inputs(run.test.images))
    with reporting_write_errors("compact model into", run_dir):
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
    with reporting_write_errors("report into", run_dir):
        return build_report(run.config, run_dir, run.model, compacted, run.test, run.rows, command)
