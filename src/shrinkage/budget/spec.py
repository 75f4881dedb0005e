"""What a user asks for: a budget, and what a compressed model achieved against it.

A :class:`Budget` states targets relative to the dense model (``macs``, ``params`` as
fractions in (0, 1]) and/or an absolute latency on the current device. Every given
target must hold; the selection functions (:func:`shrinkage.prune`,
:func:`shrinkage.factorize`) return the most accurate model they can find that meets
all of them, and an :class:`Achieved` to report target and result side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shrinkage.errors import ConfigError


def _fraction(key: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0 < value <= 1:
        raise ConfigError(f"budget {key} must be a fraction in (0, 1] of the dense model's, got {value!r}")


@dataclass(frozen=True)
class Budget:
    """Targets a compressed model must meet (all of the given ones).

    ``macs`` and ``params``: fractions in (0, 1] of the dense model's multiply-accumulates
    and parameters. ``latency_ms``: milliseconds per forward pass at ``batch_size``,
    measured on the device the model is on.
    """

    macs: float | None = None
    params: float | None = None
    latency_ms: float | None = None
    batch_size: int = 1

    def __post_init__(self) -> None:
        _fraction("macs", self.macs)
        _fraction("params", self.params)
        if self.latency_ms is not None and (
            isinstance(self.latency_ms, bool)
            or not isinstance(self.latency_ms, (int, float))
            or not math.isfinite(self.latency_ms)
            or self.latency_ms <= 0
        ):
            raise ConfigError(f"budget latency_ms must be a number of milliseconds > 0, got {self.latency_ms!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"budget batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.macs is None and self.params is None and self.latency_ms is None:
            raise ConfigError("a budget needs at least one of macs, params, latency_ms")

    def targets(self) -> dict[str, float]:
        """The given targets by name (``macs``, ``params``, ``latency_ms``)."""
        out = {"macs": self.macs, "params": self.params, "latency_ms": self.latency_ms}
        return {k: float(v) for k, v in out.items() if v is not None}

    def __str__(self) -> str:
        parts = [f"{k}={v:g}" for k, v in self.targets().items()]
        if self.latency_ms is not None:
            parts.append(f"batch_size={self.batch_size}")
        return "Budget(" + ", ".join(parts) + ")"


@dataclass(frozen=True)
class Achieved:
    """What a compressed model reached: fractions of the dense model, latency if measured."""

    macs: float
    params: float
    latency_ms: float | None = None

    def value(self, key: str) -> float | None:
        return {"macs": self.macs, "params": self.params, "latency_ms": self.latency_ms}[key]

    def meets(self, budget: Budget, slack: float = 1e-9) -> bool:
        """True when every target of ``budget`` holds."""
        for key, target in budget.targets().items():
            got = self.value(key)
            if got is None or got > target * (1 + slack):
                return False
        return True

    def side_by_side(self, budget: Budget) -> dict[str, dict[str, Any]]:
        """``{metric: {"target": t, "achieved": a, "met": bool}}`` for reports."""
        rows: dict[str, dict[str, Any]] = {}
        for key, target in budget.targets().items():
            got = self.value(key)
            rows[key] = {"target": target, "achieved": got, "met": got is not None and got <= target * (1 + 1e-9)}
        return rows
