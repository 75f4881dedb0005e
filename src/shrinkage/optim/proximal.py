"""Proximal stochastic gradient: any torch optimizer's step, then the penalties' prox.

**Threshold and momentum.** A step is ``W <- prox_{t R}(W - lr * d)`` with ``d`` what the
wrapped optimizer steps along (for SGD with momentum ``beta``, the buffer
``d = beta * d + grad``) and ``t = lr * strength``: the threshold uses the same ``lr`` as
the step, as in standard proximal SGD, and not ``lr / (1 - beta)``. The consequence,
stated once here: at a fixed point the buffer is ``grad / (1 - beta)``, so the weights
solve ``grad + (1 - beta) * strength * dR = 0``. With momentum 0.9 a configured strength
acts like one 10x smaller in the plain proximal-gradient problem; configs are tuned
with that in them (and a budget controller adapts the strength anyway).

**Why groups grow back under decaying schedules.** A zero group ``g`` stays zero after a
step exactly when ``||lr * d_g|| <= lr * strength``, i.e. ``||d_g|| <= strength``: the lr
cancels, so a schedule does not change *whether* a zero group is pushed out. It changes
what happens next. At a large lr a revived group lands far out and the penalty (and the
curvature of the loss) pulls it back to zero within a few steps; as the lr decays to 0
(cosine), the per-step shrinkage ``lr * strength`` vanishes too, so a group revived near
the end creeps out slowly and nothing is left to zero it again: training ends with
groups (and singular values) that are tiny but not zero, which compaction must keep.

**The remedy** (:class:`ThresholdPolicy`): ``min_lr_fraction`` floors the lr used for the
threshold at a fraction of the initial lr, ``t = max(lr, f * lr0) * strength``. The step
still shrinks with the schedule, so reviving needs ``||d_g|| > strength * f * lr0 / lr``,
which no finite gradient meets as ``lr -> 0``: the penalty keeps acting to the end (it
is effectively stronger while ``lr < f * lr0``). ``truncate_at_end`` makes the end of the
phase exact: :meth:`ProximalOptimizer.finish_` sets to zero what one more prox step at the
last threshold would zero, and truncates singular values below it, without shrinking
anything else. Both default to off (the plain method); ``min_lr_fraction=0.05`` with
``truncate_at_end=True`` is the recommended setting for schedules that decay to 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from shrinkage.errors import ConfigError
from shrinkage.optim.regularizer import Regularizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThresholdPolicy:
    """How the proximal threshold follows the learning rate (see the module docstring).

    ``min_lr_fraction``: the threshold uses ``max(lr, min_lr_fraction * initial_lr)``.
    ``truncate_at_end``: :meth:`ProximalOptimizer.finish_` removes what the last threshold
    would remove (the training loop calls it at the end of the regularize phase).
    """

    min_lr_fraction: float = 0.0
    truncate_at_end: bool = False

    def __post_init__(self) -> None:
        f = self.min_lr_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 0 <= f <= 1:
            raise ConfigError(f"threshold.min_lr_fraction must be a number in [0, 1], got {f!r}")
        if not isinstance(self.truncate_at_end, bool):
            raise ConfigError(f"threshold.truncate_at_end must be true or false, got {self.truncate_at_end!r}")


class ProximalOptimizer:
    """Wraps ``optimizer``: ``step()`` = gradient step on the loss, then each penalty's
    proximal map with threshold ``lr * scale * strength`` (``lr`` read from the parameter's
    group at that moment, so learning-rate schedules apply to the threshold too, floored
    by ``threshold.min_lr_fraction``; ``scale`` is the rule's multiplier in the regularizer).

    Zeros are exact because the prox sets them, instead of waiting for a subgradient to
    land on zero. LR schedulers attach to the wrapped ``.optimizer``. A strength controller
    attached to the regularizer runs after every prox.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, regularizer: Regularizer, threshold: ThresholdPolicy | None = None
    ) -> None:
        self.optimizer = optimizer
        self.regularizer = regularizer
        self.threshold = threshold if threshold is not None else ThresholdPolicy()
        self.prox_steps = 0
        # the lr each group started from; a scheduler's "initial_lr", once set, takes precedence
        self._base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        known = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [t.label for t in regularizer.terms if any(id(p) not in known for p in t.grouping.parameters)]
        if missing:
            raise ConfigError(f"regularized parameters of {missing[0]} are not in the optimizer")

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def threshold_lrs(self) -> dict[int, float]:
        """``id(parameter) -> lr`` the threshold uses now: ``max(lr, min_lr_fraction * initial lr)``."""
        f = self.threshold.min_lr_fraction
        out: dict[int, float] = {}
        for group, base in zip(self.optimizer.param_groups, self._base_lrs, strict=True):
            lr = max(float(group["lr"]), f * float(group.get("initial_lr", base)))
            out.update({id(p): lr for p in group["params"]})
        return out

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = self.optimizer.step(closure)
        self.prox_steps += 1
        controller = self.regularizer.controller
        if controller is not None:
            controller.before_prox(self)
        self.regularizer.prox_(self.threshold_lrs(), self.prox_steps)
        if controller is not None:
            controller.after_prox(self)
        return loss

    def finish_(self) -> int:
        """End of the phase: with ``truncate_at_end``, remove what one more prox step at the
        current threshold would remove, keeping everything else unchanged; returns the
        number of groups and singular values removed (0 when the policy is off)."""
        if not self.threshold.truncate_at_end:
            return 0
        removed = self.regularizer.hard_threshold_(self.threshold_lrs())
        log.info("end of proximal training: %d groups / singular values below the last threshold removed", removed)
        return removed

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "prox_steps": self.prox_steps,
            "base_lrs": list(self._base_lrs),
            "regularizer": self.regularizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state; checkpoints written before strength scales existed load too."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.prox_steps = int(state["prox_steps"])
        if "base_lrs" in state:
            self._base_lrs = [float(lr) for lr in state["base_lrs"]]
        if "regularizer" in state:
            self.regularizer.load_state_dict(state["regularizer"])
