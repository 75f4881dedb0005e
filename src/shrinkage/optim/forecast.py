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


def choose_step(forecast_at: Callable[[float], float], goal: float, limit: float, *, nearest: bool = False) -> float:
    """The change ``x`` of log-strength in ``[-limit, limit]`` to make, given the forecast
    estimate ``forecast_at(x)``, which falls as ``x`` grows.

    The outcome aimed at is the highest forecast at or below ``goal``: a budget is an upper
    bound, so where one more group jumps the estimate past the target, the step below it
    is taken. With ``nearest`` (a goal on the way to the budget, not the budget) it is the
    outcome closest to ``goal`` on either side, the lower one on a tie. Of the ``x`` giving
    that outcome, the one closest to 0 (no change): re-aiming at the edge every update
    would keep lowering the strength for as long as a dying group still dies within the
    horizon, and it never would. When even ``-limit`` forecasts below the goal, ``-limit``
    (slow down all the way); when even ``limit`` stays above, ``limit``.
    """
    if forecast_at(limit) > goal:
        return limit
    if forecast_at(-limit) <= goal:
        return -limit
    above, first = _crossing(forecast_at, goal, -limit, limit)
    outcome = forecast_at(first)
    if nearest and forecast_at(above) - goal < goal - outcome:
        outcome = forecast_at(above)  # the outcome just above the goal, given by x up to ``above``
        first = -limit if forecast_at(-limit) <= outcome else _crossing(forecast_at, outcome, -limit, above)[1]
    return min(max(0.0, first), _last_at_or_above(forecast_at, outcome, first, limit))


def _crossing(forecast_at: Callable[[float], float], value: float, low: float, high: float) -> tuple[float, float]:
    """``(x, y)``: ``y`` the smallest point of ``(low, high]`` where the falling ``forecast_at``
    is at or below ``value``, ``x`` just below it, to 40 bisections
    (``forecast_at(low) > value >= forecast_at(high)``)."""
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (low, mid) if forecast_at(mid) <= value else (mid, high)
    return low, high


def _last_at_or_above(forecast_at: Callable[[float], float], value: float, low: float, high: float) -> float:
    """The largest point of ``[low, high]`` where ``forecast_at`` is at or above ``value``, to
    40 bisections (``forecast_at(low) >= value``)."""
    if forecast_at(high) >= value:
        return high
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if forecast_at(mid) >= value else (low, mid)
    return low
