"""The ``target:`` block of a run config: a budget to compress to, and how to recover.

A run with a target is, after training and compaction, cut down to the budget (MACs,
parameters and/or latency relative to the dense model) and fine-tuned::

    target:
      macs: 0.25            # at most a quarter of the dense model's multiply-accumulates
      macs_of: [Conv2d]     # optional: count the MACs of these layer types only (as SSL reports conv MACs)
      round_to: 8           # kept channel counts are multiples of 8 (pruning only)
      importance: taylor    # pruning ranks groups by loss change measured on training batches
      rank_criterion: log_kept   # factorization: ranks keep the most product of energy shares
      penalize: weakest     # the budget controller's group Lasso acts on the groups it will remove only
      select_after_epochs: 4   # prune after 4 training epochs, train the rest with the removed weights at zero
      recalibrate_batches: 32   # BatchNorm statistics re-estimated on 32 training batches after selection
      finetune_epochs: 3
      distill_weight: 0.5   # half of the loss from the dense model as teacher
      temperature: 4.0

Omitting the block (or ``target: null``) means no target. How the model is cut down is
not a setting: it follows from the run's regularization (:func:`default_selection`);
``shrinkage compress --method`` overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from torch import nn

from shrinkage.budget.ranks import RankCriterion
from shrinkage.budget.spec import Budget
from shrinkage.config.fields import (
    MAX_EPOCHS,
    MAX_LATENCY_BATCH_SIZE,
    FieldError,
    count,
    in_range,
    positive,
)
from shrinkage.config.modules import MODULE_TYPES
from shrinkage.config.regularization import NuclearNormConfig, RegularizationConfig

#: a channel multiple beyond this is no hardware width anyone asks for: a typo
MAX_ROUND_TO = 4096
#: more batches than this only average the same statistics longer: a typo
MAX_RECALIBRATE_BATCHES = 100_000


class PruneImportance(Enum):
    """How ``prune`` estimates the damage of removing a group (:mod:`shrinkage.budget.importance`)."""

    #: first-order Taylor estimate of the loss change, on a few training batches (one scale for every layer)
    TAYLOR = "taylor"
    #: squared group norm relative to its layer's mean, no data (favours removing narrow layers)
    NORM = "norm"


class PenalizedGroups(Enum):
    """Which groups the budget controller's group Lasso acts on (:mod:`shrinkage.optim.focus`)."""

    #: every group, as in SSL: the kept groups shrink too
    ALL = "all"
    #: the weakest groups per MAC that removal to the budget needs (plus a margin), chosen
    #: again every few steps; the others train unpenalized
    WEAKEST = "weakest"


@dataclass(frozen=True)
class TargetConfig:
    """A budget (fractions of the dense model; every given one must hold) plus recovery.

    ``macs`` / ``params``: fractions in (0, 1] of the dense model's; ``macs_of``: names of
    layer types (:data:`shrinkage.config.modules.MODULE_TYPES`) whose MACs alone ``macs``
    counts (empty: every MAC). ``latency_ms``:
    milliseconds per forward pass of ``batch_size`` images on the run's device.
    ``round_to``: kept channel counts are rounded up to a multiple of it (pruning only;
    factorization ranks are not rounded). ``importance``: how pruning estimates the damage
    of removing a group (:class:`PruneImportance`). ``rank_criterion``: what factorization's
    choice of ranks minimizes (:class:`shrinkage.RankCriterion`). ``penalize``: which groups the budget
    controller's group Lasso acts on while training (:class:`PenalizedGroups`).
    ``select_after_epochs``: prune to the budget after this many epochs of the training
    phase and train the remaining ones with the removed weights held at zero
    (:mod:`shrinkage.train.early`; plain training only, None: select after training).
    ``recalibrate_batches``: training batches (no augmentation) on which BatchNorm
    statistics are re-estimated right after selection (0: keep the dense model's). Recovery:
    ``finetune_epochs`` of SGD at ``finetune_lr`` (default: the run's fine-tuning, else training, learning rate), with
    ``distill_weight`` of the loss taken from the dense model as a teacher at
    ``temperature``.
    """

    macs: float | None = None
    macs_of: tuple[str, ...] = ()
    params: float | None = None
    latency_ms: float | None = None
    batch_size: int = 1
    round_to: int = 1
    importance: PruneImportance = PruneImportance.TAYLOR
    rank_criterion: RankCriterion = RankCriterion.LOG_KEPT
    penalize: PenalizedGroups = PenalizedGroups.ALL
    select_after_epochs: int | None = None
    recalibrate_batches: int = 32
    finetune_epochs: int = 0
    finetune_lr: float | None = None
    distill_weight: float = 0.0
    temperature: float = 4.0

    def __post_init__(self) -> None:
        for key in ("macs", "params"):
            if getattr(self, key) is not None:
                in_range(key, getattr(self, key), 0.0, 1.0, low_open=True, high_open=False)
        if self.macs_of:
            if self.macs is None:
                raise FieldError("macs_of", "needs macs (it says which MACs macs counts)")
            for name in self.macs_of:
                if name not in MODULE_TYPES:
                    raise FieldError("macs_of", f"unknown layer type {name!r} (known: {', '.join(MODULE_TYPES)})")
        if self.latency_ms is not None:
            positive("latency_ms", self.latency_ms)
        if self.macs is None and self.params is None and self.latency_ms is None:
            raise FieldError("macs", "a target needs at least one of macs, params, latency_ms")
        count("batch_size", self.batch_size, minimum=1, maximum=MAX_LATENCY_BATCH_SIZE)
        count("round_to", self.round_to, minimum=1, maximum=MAX_ROUND_TO)
        if self.select_after_epochs is not None:
            count("select_after_epochs", self.select_after_epochs, minimum=1, maximum=MAX_EPOCHS)
        count("recalibrate_batches", self.recalibrate_batches, maximum=MAX_RECALIBRATE_BATCHES)
        count("finetune_epochs", self.finetune_epochs, maximum=MAX_EPOCHS)
        if self.finetune_lr is not None:
            positive("finetune_lr", self.finetune_lr)
        in_range("distill_weight", self.distill_weight, 0.0, 1.0, low_open=False, high_open=False)
        positive("temperature", self.temperature)

    def budget(self) -> Budget:
        """The targets as a :class:`shrinkage.Budget` (what the selection functions take)."""
        return Budget(macs=self.macs, params=self.params, latency_ms=self.latency_ms, batch_size=self.batch_size,
                      macs_of=self.mac_types())  # fmt: skip

    def mac_types(self) -> tuple[type[nn.Module], ...] | None:
        """The ``macs_of`` classes (None: every MAC counts)."""
        return tuple(MODULE_TYPES[name] for name in self.macs_of) or None

    @classmethod
    def of_budget(cls, budget: Budget, **recovery: object) -> TargetConfig:
        """A target with ``budget``'s values and the given recovery settings (the CLI's way in)."""
        macs_of = tuple(t.__name__ for t in budget.macs_of or ())
        unknown = [name for name, t in zip(macs_of, budget.macs_of or (), strict=True)
                   if MODULE_TYPES.get(name) is not t]  # fmt: skip
        if unknown:
            raise FieldError("macs_of", f"a target names layer types a config can name, not {unknown[0]!r}")
        return cls(macs=budget.macs, macs_of=macs_of, params=budget.params, latency_ms=budget.latency_ms,
                   batch_size=budget.batch_size, **recovery)  # type: ignore[arg-type]


class SelectionMethod(Enum):
    """How a trained model is cut down to a budget."""

    #: zero the weakest coupled channels, heads and residual branches (shrinkage.prune), then compact
    PRUNE = "prune"
    #: replace Conv2d/Linear layers by rank-r pairs, ranks chosen under the budget (shrinkage.factorize)
    FACTORIZE = "factorize"


def default_selection(regularization: RegularizationConfig) -> SelectionMethod:
    """The selection that fits how the model was trained.

    A nuclear-norm penalty (in any rule) concentrates each layer's energy in a few
    singular values, so ranks chosen under the budget lose little of it:
    factorization. Otherwise (group Lasso, other penalties or none) whole channels,
    heads and branches are what training made weak, and what compaction removes:
    pruning.
    """
    nuclear = any(isinstance(rule.penalty, NuclearNormConfig) for rule in regularization.rules)
    return SelectionMethod.FACTORIZE if nuclear else SelectionMethod.PRUNE
