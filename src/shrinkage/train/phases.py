"""The two training phases and what differs between them.

``regularize``: the penalties are on, either as proximal steps after each SGD step or
(subgradient mode) added to the loss, in which case small groups are set to exactly
zero at the end of the phase (SSL's thresholding). ``finetune``: no penalty, and the
zeros are re-imposed after every step so momentum and weight decay cannot revive
removed structures.

Each phase is a factory: its optimizer and masks are created when the phase starts,
from the weights at that moment (the fine-tuning mask must see the final zeros).

Training to a budget: a :class:`shrinkage.optim.BudgetController` attached to the
regularizer (``attach_controller``) adapts the penalty strengths during the regularize
phase; it runs inside the proximal optimizer, whose state (and so every checkpoint)
carries the controller's. ``threshold`` says how the proximal threshold follows the
learning rate (:class:`shrinkage.optim.ThresholdPolicy`); at the end of the regularize
phase the optimizer's ``finish_`` applies its final truncation, if any.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from shrinkage.config import Mode, RunConfig
from shrinkage.errors import ConfigError
from shrinkage.optim import BudgetController, ProximalOptimizer, Regularizer, ThresholdPolicy, ZeroMask
from shrinkage.train.setup import sgd

log = logging.getLogger(__name__)

REGULARIZE, FINETUNE = "regularize", "finetune"


@dataclass
class PhaseRuntime:
    """The live objects of a started phase.

    ``optimizer`` is a torch optimizer or a :class:`ProximalOptimizer` (same interface);
    ``penalty`` is added to the loss when set; ``after_step`` runs after every optimizer
    step, ``at_end`` once after the phase's last epoch (before its checkpoint).
    """

    optimizer: Any
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    penalty: Callable[[], Tensor] | None = None
    after_step: Callable[[], None] | None = None
    at_end: Callable[[], None] | None = None

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and scheduler state, for the checkpoint."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # optimizer first: building the scheduler reset the lr, the saved optimizer state has the current one
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])


@dataclass(frozen=True)
class Phase:
    """A named phase of ``epochs`` epochs whose runtime ``start(resumed)`` creates.

    ``resumed`` is true when the phase continues from a checkpoint taken inside it: the
    weights are then already the phase's own and must not be re-initialized.
    """

    name: str
    epochs: int
    start: Callable[[bool], PhaseRuntime]


def plan_phases(
    config: RunConfig,
    model: nn.Module,
    regularizer: Regularizer | None,
    controller: BudgetController | None = None,
    threshold: ThresholdPolicy | None = None,
) -> list[Phase]:
    """The phases of a run, in order (a phase with 0 epochs is still listed, and skipped).

    ``controller``: a budget controller attached to ``regularizer`` (proximal mode only;
    one attached to the regularizer runs whether or not it is passed here).
    ``threshold``: the proximal threshold policy (default: the plain ``lr * strength``).
    """
    _check_controller(config, regularizer, controller)

    def regularize(resumed: bool) -> PhaseRuntime:
        optimizer = sgd(model.parameters(), config.train.lr, config)
        scheduler = config.train.lr_schedule.build(optimizer, config.train.epochs)
        if regularizer is None:
            return PhaseRuntime(optimizer, scheduler)
        if config.regularization.mode is Mode.PROXIMAL:
            proximal = ProximalOptimizer(optimizer, regularizer, threshold)

            def finish() -> None:
                proximal.finish_()

            return PhaseRuntime(proximal, scheduler, at_end=finish)
        zero_threshold = config.regularization.zero_threshold

        def zero_small() -> None:
            zeroed = regularizer.zero_small_groups_(zero_threshold)
            log.info("subgradient mode: set %d groups with norm < %g to zero", zeroed, zero_threshold)

        return PhaseRuntime(optimizer, scheduler, penalty=regularizer.value, at_end=zero_small)

    def finetune(resumed: bool) -> PhaseRuntime:
        optimizer = sgd(model.parameters(), config.finetune.lr or config.train.lr, config)
        scheduler = config.finetune.lr_schedule.build(optimizer, config.finetune.epochs)
        if regularizer is None:
            return PhaseRuntime(optimizer, scheduler)
        mask = ZeroMask.capture(regularizer)
        if config.finetune.reinitialize and not resumed:
            _reinitialize(model, config.train.seed)
            mask.apply_()
            log.info("fine-tuning restarts the kept weights from a fresh initialization")
        log.info("fine-tuning with %d weights held at zero", mask.zero_count)
        return PhaseRuntime(optimizer, scheduler, after_step=mask.apply_)

    return [Phase(REGULARIZE, config.train.epochs, regularize), Phase(FINETUNE, config.finetune.epochs, finetune)]


def _check_controller(
    config: RunConfig, regularizer: Regularizer | None, controller: BudgetController | None
) -> None:
    attached = regularizer.controller if regularizer is not None else None
    if controller is not None and controller is not attached:
        raise ConfigError("target: the budget controller is not attached to this run's regularizer "
                          "(build it with attach_controller(regularizer, ...))")
    if attached is not None and config.regularization.mode is not Mode.PROXIMAL:
        raise ConfigError("regularization.mode: training to a budget needs the proximal mode "
                          f"(the controller runs inside proximal steps), got {config.regularization.mode.value}")


def _reinitialize(model: nn.Module, seed: int) -> None:
    """Fresh default initialization of every layer, reproducible from the run's seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        for m in model.modules():
            if m is not model and hasattr(m, "reset_parameters"):
                m.reset_parameters()
