"""What a user asks for: a budget, and what a compressed model achieved against it.

A :class:`Budget` states targets relative to the dense model (``macs``, ``params`` as
fractions in (0, 1]) and/or an absolute latency on the current device. Every given
target must hold; the selection functions (:func:`shrinkage.prune`,
:func:`shrinkage.factorize`) return the most accurate model they can find that meets
all of them, and an :class:`Achieved` to report target and result side by side.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from torch import nn

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
    measured on the device the model is on. ``macs_of``: layer types whose MACs alone
    ``macs`` counts, e.g. ``(nn.Conv2d,)`` for the convolutions' share, as the SSL paper
    reports it (None: every MAC of the model); see :meth:`mac_layers`. ``macs_in``: the
    names of those modules in the dense model, fixed by :meth:`pinned_to` so that the
    models derived from it (compacted, factorized) are counted by the same layers.
    """

    macs: float | None = None
    params: float | None = None
    latency_ms: float | None = None
    batch_size: int = 1
    macs_of: tuple[type[nn.Module], ...] | None = None
    macs_in: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.macs_of, type):  # one type given bare
            object.__setattr__(self, "macs_of", (self.macs_of,))
        if self.macs_of is not None:
            if self.macs is None:
                raise ConfigError("budget macs_of needs a macs target (it says which MACs macs counts)")
            if not self.macs_of or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in self.macs_of):
                raise ConfigError(f"budget macs_of must be a non-empty tuple of nn.Module classes, "
                                  f"got {self.macs_of!r}")  # fmt: skip
            object.__setattr__(self, "macs_of", tuple(self.macs_of))
        if self.macs_in is not None:
            if self.macs is None:
                raise ConfigError("budget macs_in needs a macs target (it says which MACs macs counts)")
            if not self.macs_in or not all(isinstance(n, str) for n in self.macs_in):
                raise ConfigError(f"budget macs_in must be a non-empty set of module names, got {self.macs_in!r}")
            object.__setattr__(self, "macs_in", frozenset(self.macs_in))
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

    def mac_layers(self, model: nn.Module) -> frozenset[str] | None:
        """Names of the outermost modules of ``model`` (the dense one) whose MACs ``macs``
        counts, for :func:`shrinkage.metrics.count_macs` ``layers``; None: all of them.

        Resolved on the dense model and then used by name, so that a layer compaction
        replaced or factorized still counts as the layer it was."""
        if self.macs_in is not None:
            return self.macs_in
        if self.macs_of is None:
            return None
        names = [name for name, m in model.named_modules() if isinstance(m, self.macs_of)]
        if not names:
            raise ConfigError(f"budget macs_of={self.scope()}: {type(model).__name__} has no such module")
        return frozenset(n for n in names if not any(o != n and (o == "" or n.startswith(o + ".")) for o in names))

    def pinned_to(self, model: nn.Module) -> Budget:
        """This budget with the layers its ``macs`` counts named as in ``model`` (the dense
        one); unchanged without a scope."""
        layers = self.mac_layers(model)
        return self if layers is None or self.macs_in is not None else dataclasses.replace(self, macs_in=layers)

    def scope(self) -> str | None:
        """Which MACs ``macs`` counts: the ``macs_of`` types by name (``"Conv2d"``), else
        the ``macs_in`` names; None without a scope (every MAC)."""
        if self.macs_of is not None:
            return "+".join(t.__name__ for t in self.macs_of)
        return None if self.macs_in is None else ",".join(sorted(self.macs_in))

    def __str__(self) -> str:
        parts = [f"{k}={v:g}" for k, v in self.targets().items()]
        if self.scope() is not None:
            parts.insert(1, f"macs_of={self.scope()}")
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
