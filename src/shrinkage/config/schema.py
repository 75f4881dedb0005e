"""Typed, frozen configs of one run; every value is checked at construction.

The YAML file mirrors this tree (``train.lr``, ``data.batch_size``, ...); see
``configs/*.yaml`` for complete examples and :mod:`shrinkage.config.loader` for how
a file becomes a :class:`RunConfig`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch

from shrinkage.config.fields import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_LATENCY_BATCH_SIZE,
    MAX_REPEATS,
    MAX_SEED,
    FieldError,
    count,
    in_range,
    non_empty,
    non_negative,
    positive,
)
from shrinkage.config.regularization import RegularizationConfig
from shrinkage.config.target import MAX_ROUND_TO, TargetConfig

if TYPE_CHECKING:
    from shrinkage.compact.plan import CompactOptions


@dataclass(frozen=True)
class ModelConfig:
    """A zoo model; ``None`` geometry is taken from the dataset when the config is loaded."""

    name: str
    in_channels: int | None = None
    num_classes: int | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        non_empty("name", self.name)
        for key in ("in_channels", "num_classes", "image_size"):
            if getattr(self, key) is not None:
                count(key, getattr(self, key), minimum=1)


@dataclass(frozen=True)
class DataConfig:
    """Dataset name, where its files are, batch sizes.

    ``limit_train`` keeps only the first N training samples: for smoke tests only.
    Test accuracy is always measured on the full test set.
    """

    name: str = "mnist"
    dir: str | None = None
    batch_size: int = 64
    test_batch_size: int = 1000
    limit_train: int | None = None

    def __post_init__(self) -> None:
        non_empty("name", self.name)
        count("batch_size", self.batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
        count("test_batch_size", self.test_batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
        if self.limit_train is not None:
            count("limit_train", self.limit_train, minimum=1)


@dataclass(frozen=True)
class ConstantSchedule:
    """The learning rate never changes."""

    KIND: ClassVar[str] = "none"

    def build(self, optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
        return None


@dataclass(frozen=True)
class StepSchedule:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs."""

    KIND: ClassVar[str] = "step"
    step_size: int
    gamma: float = 0.1

    def __post_init__(self) -> None:
        count("step_size", self.step_size, minimum=1, maximum=MAX_EPOCHS)
        in_range("gamma", self.gamma, 0.0, 1.0, low_open=True, high_open=False)

    def build(self, optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.step_size, gamma=self.gamma)


@dataclass(frozen=True)
class CosineSchedule:
    """Cosine annealing from ``lr`` to ``eta_min`` over the phase's epochs."""

    KIND: ClassVar[str] = "cosine"
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        non_negative("eta_min", self.eta_min)

    def build(self, optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=self.eta_min)


ScheduleConfig = ConstantSchedule | StepSchedule | CosineSchedule


@dataclass(frozen=True)
class OptimConfig:
    """SGD settings of the regularized training phase (``train:`` in YAML)."""

    lr: float
    epochs: int
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    lr_schedule: ScheduleConfig = field(default_factory=ConstantSchedule)
    seed: int = 0
    #: run the training steps through ``torch.compile`` (evaluation, checkpoints and
    #: compaction use the module itself); ResNet-20 on a 2-core CPU trains about 1.3x faster
    #: (results/train_speed). Float round-off differs from eager, so a run must be resumed
    #: with the same setting.
    compile: bool = False

    def __post_init__(self) -> None:
        positive("lr", self.lr)
        if not isinstance(self.compile, bool):
            raise FieldError("compile", f"must be true or false, got {self.compile!r}")
        count("epochs", self.epochs, maximum=MAX_EPOCHS)
        in_range("momentum", self.momentum, 0.0, 1.0, low_open=False, high_open=True)
        non_negative("weight_decay", self.weight_decay)
        count("seed", self.seed, maximum=MAX_SEED)
        if not isinstance(self.nesterov, bool):
            raise FieldError("nesterov", f"must be true or false, got {self.nesterov!r}")
        if self.nesterov and self.momentum == 0:
            raise FieldError("nesterov", "needs momentum > 0")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning after regularization: penalty off, removed structures kept at zero.

    ``lr`` defaults to the training phase's initial learning rate. ``reinitialize``
    restarts the kept weights from a fresh initialization (same masks) instead of
    continuing from the regularized ones: retraining the found structure, which is not
    part of SSL and is reported as such; it helps where the penalty shrank the kept
    weights far from a good solution (the MLP on MNIST).
    """

    epochs: int = 0
    lr: float | None = None
    lr_schedule: ScheduleConfig = field(default_factory=ConstantSchedule)
    reinitialize: bool = False

    def __post_init__(self) -> None:
        count("epochs", self.epochs, maximum=MAX_EPOCHS)
        if self.lr is not None:
            positive("lr", self.lr)


@dataclass(frozen=True)
class CompactConfig:
    """Post-processing: compaction always; low-rank factorization keeping ``energy``.

    ``factorize_layers`` (name globs) limits factorization to those layers, typically the
    ones the nuclear norm was applied to; empty means every Conv2d/Linear. ``round_to``:
    every kept channel count is rounded up to a multiple of it by keeping zero channels
    (exact; hardware-friendly widths).
    """

    factorize: bool = False
    energy: float = 0.9
    factorize_layers: tuple[str, ...] = ()
    round_to: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.factorize, bool):
            raise FieldError("factorize", f"must be true or false, got {self.factorize!r}")
        in_range("energy", self.energy, 0.0, 1.0, low_open=True, high_open=False)
        count("round_to", self.round_to, minimum=1, maximum=MAX_ROUND_TO)

    def options(self) -> CompactOptions:
        """The :class:`shrinkage.CompactOptions` these settings ask for."""
        # imported here: the config tree stays importable without the compaction stack
        from shrinkage.compact.plan import CompactOptions

        return CompactOptions(round_to=self.round_to)


@dataclass(frozen=True)
class ReportConfig:
    """What the report measures: latency batch sizes and repeats, whether to draw plots.

    ``repeats`` scales the timing budget (about ``0.3 * repeats`` seconds per model and batch
    size, split into many short interleaved rounds). ``layer_latency`` also times every layer
    of the dense and the compact model alone, at the first latency batch size, for about
    ``0.3 * repeats`` seconds in all, so the report shows where the time goes.
    """

    latency_batch_sizes: tuple[int, ...] = (1, 64)
    repeats: int = 5
    plots: bool = True
    layer_latency: bool = True

    def __post_init__(self) -> None:
        for size in self.latency_batch_sizes:
            count("latency_batch_sizes", size, minimum=1, maximum=MAX_LATENCY_BATCH_SIZE)
        count("repeats", self.repeats, minimum=1, maximum=MAX_REPEATS)
        if not isinstance(self.layer_latency, bool):
            raise FieldError("layer_latency", f"must be true or false, got {self.layer_latency!r}")


_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything one experiment needs; the run directory defaults to ``out_dir/name``."""

    # keyword-only: lets the fields follow the YAML's reading order despite defaults
    name: str
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: OptimConfig
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    compact: CompactConfig = field(default_factory=CompactConfig)
    #: a budget to cut the trained model down to, then fine-tune; None: no target
    target: TargetConfig | None = None
    report: ReportConfig = field(default_factory=ReportConfig)
    out_dir: str = "runs"
    device: str = "cpu"

    def __post_init__(self) -> None:
        # the name becomes a directory: keep it one plain path component
        if not isinstance(self.name, str) or not _RUN_NAME.match(self.name):
            raise FieldError("name", f"must be letters, digits, '.', '_' or '-', got {self.name!r}")
        non_empty("out_dir", self.out_dir)
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise FieldError("device", f"must be cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.target is not None and self.target.select_after_epochs is not None:
            self._check_early_selection(self.target.select_after_epochs)

    def _check_early_selection(self, epoch: int) -> None:
        key = "target.select_after_epochs"
        if epoch >= self.train.epochs:
            raise FieldError(key, f"must be below train.epochs ({self.train.epochs}) to leave epochs "
                                  f"to train the pruned model, got {epoch}")  # fmt: skip
        if self.regularization.rules:
            # a penalty would fight the mask on the groups it holds, and a nuclear-norm run selects by factorizing
            raise FieldError(key, "early selection prunes a plainly trained model; "
                                  "remove regularization.rules or this key")  # fmt: skip
