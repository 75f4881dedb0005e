"""Where the structure is heading under a given strength, and the strength to choose.

A :class:`Forecast` extrapolates the summaries a MAC estimate is computed from (group
norms, singular values; see :class:`shrinkage.optim.estimators.StructureMacEstimator`):
each entry ``n`` moved at a measured pace ``dn/dt`` under the strength scale ``s0`` that
was in effect, and one step's prox shrinks it by ``u`` per unit of scale (``u`` is
probed, for the group Lasso it is ``lr * strength * c``). Under a scale ``s`` instead the
pace is taken to be ``dn/dt - (s - s0) * u``: the gradient's part stays what it was.
So ``h`` steps ahead ``n`` is ``max(0, n + h * (dn/dt - (s - s0) * u))``, and zeros stay
zero. Structures on their way out count as removed before they reach zero: a strength's
effect is seen long before the zeros appear.

:func:`choose_step` then picks the change of strength from such forecasts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Forecast:
    """Each term's summary ``now``, its measured ``pace`` per step under the scales that
    were ``in_effect``, and the prox's ``unit_shrink`` per step and unit of scale."""

    now: Sequence[Tensor]
    pace: Sequence[Tensor]
    unit_shrink: Sequence[Tensor]
    in_effect: Sequence[float]

    def ahead(self, scales: Sequence[float], steps: int) -> list[Tensor]:
        """The summaries ``steps`` steps ahead under ``scales`` (one per term)."""
        out = []
        for now, pace, unit, was, scale in zip(
            self.now, self.pace, self.unit_shrink, self.in_effect, scales, strict=True
        ):
            future = torch.clamp(now + steps * (pace - (scale - was) * unit), min=0)
            out.append(torch.where(now == 0, torch.zeros_like(future), future))
        return out


def choose_step(forecast_at: Callable[[float], float], goal: float, limit: float) -> float:
    """The change ``x`` of log-strength in ``[-limit, limit]`` to make, given the forecast
    estimate ``forecast_at(x)``, which falls as ``x`` grows.

    The outcome aimed at is the highest forecast at or below ``goal``: a budget is an upper
    bound, so where one more group jumps the estimate past the target, the step below it
    is taken. Of the ``x`` giving that outcome, the one closest to 0 (no change): re-aiming
    at the edge every update would keep lowering the strength for as long as a dying group
    still dies within the horizon, and it never would. When even ``-limit`` forecasts
    below the goal, ``-limit`` (slow down all the way); when even ``limit`` stays above,
    ``limit``.
    """
    if forecast_at(limit) > goal:
        return limit
    if forecast_at(-limit) <= goal:
        return -limit
    low, high = -limit, limit  # the smallest x with forecast <= goal lies in (low, high]
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (low, mid) if forecast_at(mid) <= goal else (mid, high)
    first, outcome = high, forecast_at(high)
    low, high = first, limit  # the largest x with forecast >= outcome lies in [low, high)
    if forecast_at(high) >= outcome:
        low = high
    for _ in range(40 if high > low else 0):
        mid = (low + high) / 2
        low, high = (mid, high) if forecast_at(mid) >= outcome else (low, mid)
    return min(max(0.0, first), low)
