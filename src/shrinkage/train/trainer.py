"""The training loop: phases of epochs, a checkpoint after every epoch, exact resume.

Resuming restores everything the next epoch depends on: weights, optimizer state
(momentum buffers, proximal step count), LR scheduler, the shuffling generator and
the global torch RNG. A run stopped after any epoch and resumed therefore ends with
the same weights as an uninterrupted run with the same seed (on the same device and
thread count: floating-point kernels may differ across those).

Under torchrun the loop runs in every process on its shard of each global batch
(:mod:`shrinkage.train.distributed`): rank 0 evaluates, logs and writes the checkpoint,
which holds every rank's RNG state, so a resumed multi-process run is exact too.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from shrinkage.budget import Budget
from shrinkage.config import Mode, PenalizedGroups, RunConfig, resolve_rule, resolve_rules, to_dict
from shrinkage.data import ImageDataset, batches, get_dataset_spec
from shrinkage.errors import ConfigError, TrainingError
from shrinkage.io import load_checkpoint, reporting_write_errors, save_checkpoint
from shrinkage.metrics import evaluate
from shrinkage.optim import Regularizer, ThresholdPolicy
from shrinkage.optim.controller import BudgetController, ControllerConfig, attach_controller
from shrinkage.train import distributed
from shrinkage.train.compaction import example_inputs
from shrinkage.train.early import EarlySelection
from shrinkage.train.history import structure_stats, term_labels, write_metrics
from shrinkage.train.phases import Phase, PhaseRuntime, plan_phases

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.csv"
#: config sections that change what training computes; a resumed run must match them
TRAINING_SECTIONS = ("model", "data", "train", "regularization", "finetune")
#: keys inside those sections that do not change the result (data moved, eval batching)
RESUME_MAY_CHANGE = frozenset({"data.dir", "data.test_batch_size"})


@dataclass(frozen=True)
class TrainResult:
    """The trained model (the same object that was passed in) and the per-epoch rows."""

    model: nn.Module
    rows: list[dict[str, Any]]
    resumed_at: int
    epochs: int


def first_difference(saved: Any, current: Any, path: str = "", ignore: frozenset[str] = frozenset()) -> str | None:
    """``"<dotted key>: <saved> there, <current> now"`` for the first key that differs, else ``None``.

    Walks mappings key by key and lists of equal length item by item, so the message
    names the innermost key (``regularization.rules[1].penalty.strength``), not a section.
    Keys in ``ignore`` (dotted) may differ.
    """
    if path in ignore:
        return None
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in dict.fromkeys([*saved, *current]):
            found = first_difference(saved.get(key), current.get(key), f"{path}.{key}" if path else str(key), ignore)
            if found:
                return found
        return None
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        for i, (a, b) in enumerate(zip(saved, current)):
            found = first_difference(a, b, f"{path}[{i}]", ignore)
            if found:
                return found
        return None
    return None if saved == current else f"{path}: {saved!r} there, {current!r} now"


def check_same_training(saved: dict[str, Any], config: RunConfig, where: Path) -> None:
    """Raise if ``config`` would train differently from the run saved in ``where``."""
    current = to_dict(config)
    for section in TRAINING_SECTIONS:
        diff = first_difference(saved.get(section), current.get(section), section, RESUME_MAY_CHANGE)
        if diff:
            raise ConfigError(
                f"{where} holds a run with a different config ({diff}); use another --out or delete it"
            )


def _check_rules_match(config: RunConfig, model: nn.Module) -> None:
    """Fail with the config's own rule index if a rule selects nothing (a typo in a name)."""
    for i, rule in enumerate(config.regularization.rules):
        if not resolve_rule(rule)[0].chosen(model):
            raise ConfigError(
                f"regularization.rules[{i}].select ({rule.select}) matches no module of model '{config.model.name}'"
            )


class Trainer:
    """Trains ``model`` through the phases of ``config``, checkpointing into ``run_dir``.

    ``on_epoch_end(row)`` is called after each epoch's checkpoint is written (tests use it
    to stop a run midway). ``progress`` shows a tqdm bar per epoch.
    """

    def __init__(
        self,
        config: RunConfig,
        model: nn.Module,
        train_set: ImageDataset,
        test_set: ImageDataset,
        run_dir: str | Path,
        *,
        progress: bool = False,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.train_set, self.test_set = train_set, test_set
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self.world = distributed.current()
        distributed.check_batch_size(config.data.batch_size, self.world)
        #: per epoch with replicas that had drifted apart (and were reset to rank 0's): what differed
        self.replica_differences: list[str] = []
        _check_rules_match(config, model)
        self.rules = resolve_rules(config.regularization, (1, *train_set.images.shape[1:]))
        self.regularizer = Regularizer(model, self.rules) if self.rules else None
        self.labels = term_labels(self.regularizer, self.rules) if self.regularizer else []
        self.controller = self._controller(config, model, train_set)
        reg = config.regularization
        threshold = ThresholdPolicy(reg.min_lr_fraction, reg.truncate_at_end)
        self.phases = plan_phases(config, model, self.regularizer, self.controller, threshold)
        self.early = self._early_selection(config, model, train_set, test_set)
        self.generator = torch.Generator().manual_seed(config.train.seed)
        self.rows: list[dict[str, Any]] = []
        self._last_good: str | None = None

    def _controller(self, config: RunConfig, model: nn.Module, train_set: ImageDataset) -> BudgetController | None:
        """With a ``target.macs`` and proximal penalties, a controller drives the strengths so
        that what compaction would remove reaches the budget by the end of training (the
        selection after training then makes it exact)."""
        target = config.target
        if target is None or target.macs is None or self.regularizer is None:
            return None
        if config.regularization.mode is not Mode.PROXIMAL or config.train.epochs == 0:
            log.info("target.macs: no strength controller (it needs proximal training); selection alone meets it")
            return None
        steps = config.train.epochs * math.ceil(len(train_set) / config.data.batch_size)
        example = train_set.images[:1].clone()
        control = ControllerConfig(focus=target.penalize is PenalizedGroups.WEAKEST)
        budget = Budget(macs=target.macs, macs_of=target.mac_types())  # the controller drives MACs only
        return attach_controller(self.regularizer, model, (example,), budget, control, total_steps=steps)

    @staticmethod
    def _early_selection(config: RunConfig, model: nn.Module, train_set: ImageDataset,
                         test_set: ImageDataset) -> EarlySelection | None:  # fmt: skip
        if config.target is None or config.target.select_after_epochs is None:
            return None
        return EarlySelection(config, model, train_set, example_inputs(test_set.images))

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def fit(self) -> TrainResult:
        """Run (or finish) training; returns when every phase is complete."""
        with reporting_write_errors("run directory", self.run_dir):
            self.run_dir.mkdir(parents=True, exist_ok=True)
        start_phase, start_epoch, saved_runtime = self._resume()
        distributed.same_on_every_rank((start_phase, start_epoch), "the epoch to resume after")
        resumed_at = len(self.rows)
        network = distributed.wrap(self.model, self.world)  # the model itself in one process
        if self.config.train.compile:
            # compiled once for the run; it shares the module's parameters, so the optimizer,
            # the proximal steps and the fine-tuning masks act on what it computes with
            network = torch.compile(network)  # type: ignore[assignment]
        for index in range(start_phase, len(self.phases)):
            phase = self.phases[index]
            first = start_epoch + 1 if index == start_phase else 1
            if first > phase.epochs:
                continue
            resumed = index == start_phase and saved_runtime is not None
            runtime = phase.start(resumed)
            if resumed:
                runtime.load_state_dict(saved_runtime)
            for epoch in range(first, phase.epochs + 1):
                row = self._epoch(network, index, phase, runtime, epoch)
                self._save(index, epoch, runtime)
                if self.on_epoch_end is not None:
                    self.on_epoch_end(row)
        if self._last_good is None:  # nothing trained nor resumed: still leave a checkpoint to compact
            self._save(len(self.phases), 0, None)
        return TrainResult(self.model, self.rows, resumed_at, self._total_epochs())

    def _total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def _epoch(
        self, network: nn.Module, index: int, phase: Phase, runtime: PhaseRuntime, epoch: int
    ) -> dict[str, Any]:
        started = time.perf_counter()
        lr = runtime.lr
        train_loss = self._train_epoch(network, phase, runtime, epoch)
        if epoch == phase.epochs and runtime.at_end is not None:
            runtime.at_end()
        if self.early is not None and self.early.due(index, epoch):
            self.early.select_()
        if runtime.scheduler is not None:
            runtime.scheduler.step()
        self._check_replicas(phase.name, epoch)
        result = distributed.run_on_main(
            lambda: evaluate(self.model, batches(self.test_set, self.config.data.test_batch_size, shuffle=False)))
        with torch.no_grad():
            penalty = float(self.regularizer.value()) if self.regularizer is not None else 0.0
        row: dict[str, Any] = {
            "phase": phase.name,
            "epoch": epoch,
            "global_epoch": sum(p.epochs for p in self.phases[:index]) + epoch,
            "lr": lr,
            "train_loss": train_loss,
            "penalty": penalty,
            "test_accuracy": result.accuracy,
            "test_loss": result.loss,
            "time_s": round(time.perf_counter() - started, 3),
            **structure_stats(self.regularizer, self.labels),
        }
        if self.early is not None:
            row["held_at_zero"] = self.early.mask.zero_count if self.early.mask is not None else 0
        self.rows.append(row)
        if self.world.is_main:
            log.info(
                "%s epoch %d/%d: train loss %.4f, test accuracy %.2f%%, penalty %.4g, lr %.3g, %.1fs",
                phase.name, epoch, phase.epochs, train_loss, 100 * result.accuracy, penalty, lr, row["time_s"],
            )
        return row

    def _check_replicas(self, phase: str, epoch: int) -> None:
        """Several processes: every rank must hold the same weights; if not, continue from rank 0's."""
        differ = distributed.sync_replicas(self.model, self.regularizer)
        if differ:
            self.replica_differences.append(f"{phase} epoch {epoch}: {', '.join(differ)}")
            if self.world.is_main:
                log.warning("%s epoch %d: the processes' replicas differed in %s; continuing from rank 0's",
                            phase, epoch, ", ".join(differ))

    def _train_epoch(self, network: nn.Module, phase: Phase, runtime: PhaseRuntime, epoch: int) -> float:
        data, world = self.train_set, self.world
        augment = get_dataset_spec(self.config.data.name).train_augment
        size = self.config.data.batch_size  # the global batch; each process takes its shard of it
        network.train()
        loss_sum, seen = 0.0, 0
        bar = tqdm(total=math.ceil(len(data) / size), desc=f"{phase.name} {epoch}/{phase.epochs}",
                   unit="batch", leave=False, disable=not (self.progress and world.is_main))
        with bar:
            for step, (inputs, labels) in enumerate(batches(data, size, shuffle=True, generator=self.generator), 1):
                if augment is not None:  # before sharding: every process draws the same
                    inputs = augment(inputs, self.generator)
                part = distributed.shard(inputs, labels, world)
                runtime.optimizer.zero_grad()
                loss = F.cross_entropy(network(part.images), part.labels) * part.weight
                objective = loss + runtime.penalty() if runtime.penalty is not None else loss
                # averaged over the processes: the global batch's values, the same on every rank,
                # so that all of them stop together on a non-finite one
                value, global_loss = distributed.mean_over_ranks(objective.detach(), loss.detach())
                if not math.isfinite(value):
                    raise TrainingError(self._diverged(value, phase.name, epoch, step))
                objective.backward()
                runtime.optimizer.step()
                if runtime.after_step is not None:
                    runtime.after_step()
                if self.early is not None:
                    self.early.after_step()
                loss_sum += global_loss * labels.shape[0]
                seen += labels.shape[0]
                bar.update()
                if step % 25 == 0:
                    bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        return loss_sum / max(1, seen)

    def _diverged(self, value: float, phase: str, epoch: int, step: int) -> str:
        last = f"last good checkpoint: {self.checkpoint_path} ({self._last_good})" if self._last_good else (
            "no checkpoint was written yet")
        return f"loss is {value} in phase '{phase}', epoch {epoch}, step {step} (lower the lr?); {last}"

    def _save(self, index: int, epoch: int, runtime: PhaseRuntime | None) -> None:
        """Rank 0 writes the checkpoint and metrics; the other processes wait until they are written."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        if self.world.distributed:  # each rank's own global RNGs (dropout draws differ per shard)
            own = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                own["cuda"] = torch.cuda.get_rng_state()
            rng["ranks"] = distributed.gather_objects(own)
        if self.world.is_main:
            self._write(index, epoch, runtime, rng)
        distributed.barrier()
        phase = self.phases[index].name if index < len(self.phases) else "done"
        self._last_good = f"phase '{phase}', epoch {epoch}"

    def _write(self, index: int, epoch: int, runtime: PhaseRuntime | None, rng: dict[str, Any]) -> None:
        phase = self.phases[index].name if index < len(self.phases) else "done"
        state = {
            "phase_index": index,
            "phase": phase,
            "epoch": epoch,
            "finished": len(self.rows) == self._total_epochs(),
            "config": to_dict(self.config),
            "runtime": runtime.state_dict() if runtime is not None else None,
            "rng": rng,
            "rows": self.rows,
            "early_selection": self.early.state() if self.early is not None else None,
        }
        # a full disk or a directory gone read-only mid-run: one line, and the last checkpoint stays intact
        with reporting_write_errors("checkpoint", self.checkpoint_path):
            save_checkpoint(self.checkpoint_path, self.model.state_dict(), state)
        with reporting_write_errors("metrics", self.run_dir / METRICS):
            write_metrics(self.run_dir / METRICS, self.rows)

    def _restore_rng(self, rng: dict[str, Any]) -> None:
        """The global RNGs as saved; resumed by as many processes as saved them, each rank's own."""
        ranks = rng.get("ranks")
        own = ranks[self.world.rank] if ranks and len(ranks) == self.world.size else rng
        torch.set_rng_state(own["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if own is not rng and "cuda" in own and torch.cuda.is_available():
            torch.cuda.set_rng_state(own["cuda"])

    def _resume(self) -> tuple[int, int, dict[str, Any] | None]:
        if not self.checkpoint_path.exists():
            return 0, 0, None
        # a damaged file raises DataError("checkpoint X is corrupted ...") here, before anything is
        # restored: it is never taken for, nor reported as, the last good checkpoint
        checkpoint = load_checkpoint(self.checkpoint_path)
        state = checkpoint.state
        check_same_training(state["config"], self.config, self.run_dir)
        self.model.load_state_dict(checkpoint.model)
        self.generator.set_state(state["rng"]["generator"])
        self._restore_rng(state["rng"])
        self.rows = list(state["rows"])
        if self.early is not None:
            self.early.restore(state.get("early_selection"))
        self._last_good = f"phase '{state['phase']}', epoch {state['epoch']}"
        if state["finished"]:
            log.info("%s: training already complete (%d epochs)", self.run_dir, len(self.rows))
        else:
            log.info("%s: resuming after %s", self.run_dir, self._last_good)
        return int(state["phase_index"]), int(state["epoch"]), state["runtime"]
