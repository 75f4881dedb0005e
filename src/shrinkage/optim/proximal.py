"""Proximal stochastic gradient: any torch optimizer's step, then the penalties' prox."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from shrinkage.errors import ConfigError
from shrinkage.optim.regularizer import Regularizer


class ProximalOptimizer:
    """Wraps ``optimizer``: ``step()`` = gradient step on the loss, then each penalty's
    proximal map with threshold ``lr * strength`` (``lr`` read from the parameter's group
    at that moment, so learning-rate schedules apply to the threshold too).

    Zeros are exact because the prox sets them, instead of waiting for a subgradient to
    land on zero. LR schedulers attach to the wrapped ``.optimizer``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, regularizer: Regularizer) -> None:
        self.optimizer = optimizer
        self.regularizer = regularizer
        self.prox_steps = 0
        known = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [t.label for t in regularizer.terms if any(id(p) not in known for p in t.grouping.parameters)]
        if missing:
            raise ConfigError(f"regularized parameters of {missing[0]} are not in the optimizer")

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = self.optimizer.step(closure)
        self.prox_steps += 1
        step_of = {id(p): float(g["lr"]) for g in self.optimizer.param_groups for p in g["params"]}
        self.regularizer.prox_(step_of, self.prox_steps)
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "prox_steps": self.prox_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.prox_steps = int(state["prox_steps"])
