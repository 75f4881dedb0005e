"""Ranks chosen globally under a budget, instead of one energy for every layer.

Each candidate layer ``l`` (weight ``out x in``, ``in = C*kh*kw`` for a conv) either stays
dense or becomes a rank-``r`` pair costing ``r * (in + out)`` MACs per output position
(and ``r * (in + out)`` parameters) instead of ``in * out``. Truncating to rank ``r``
keeps the share ``k_l(r) = sum_{i < r} sigma_i^2 / sum_i sigma_i^2`` of the layer's
energy and loses ``e_l(r) = 1 - k_l(r)``; shares, not absolute energies, so that layers
trained at different scales compare.

What is minimized is ``sum_l d(e_l(r_l))`` under the budget, ``d`` the
:class:`RankCriterion`. The default, ``-log k_l``, maximizes the product of the kept
shares: on an input with no preferred direction a truncated layer passes the share
``k_l`` of its output energy, and a chain of truncated layers the product. The plain sum
of lost shares treats losing 95% of one layer like losing 47.5% of two, and so cuts the
largest layer of a plainly trained network, whose spectrum is flat, to rank 1 or 2: a
bottleneck no fine-tuning recovers from (MNIST LeNet at 5% of the parameters: fc1 at
rank 1, 87% after 6 epochs of recovery, against 99.0% at the ranks the product picks).

With a multiplier ``lam``, each layer independently picks ``argmin_r d(e_l(r)) + lam *
cost_l(r)``; the total cost falls as ``lam`` grows, so bisection on ``lam`` finds the
cheapest trade-off that fits. Both criteria are convex in ``r`` (``k_l`` is concave: its
increments ``sigma_r^2`` shrink; ``-log`` is convex and decreasing), so this is the greedy
"drop the singular value that costs least per MAC saved" done exactly. Slack left by the
last jump is then spent greedily, one rank at a time, on the layer that regains the most
per unit of cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from shrinkage.budget.spec import Budget

DENSE = -1  # the layer is left as it is
#: a kept share below this counts as this (the log of an exact 0 would be infinite)
_SMALLEST_SHARE = 1e-300


class RankCriterion(Enum):
    """What a choice of ranks under a budget minimizes, summed over the layers."""

    #: ``-log`` of the share of each layer's energy kept: the product of the shares is maximized
    LOG_KEPT = "log_kept"
    #: the share of each layer's energy lost (losing 95% of one layer costs what 47.5% of two do)
    LOST = "lost"

    def damage(self, lost: float) -> float:
        """The criterion's cost of losing the share ``lost`` of a layer's energy."""
        if self is RankCriterion.LOST:
            return lost
        return -math.log(max(1.0 - lost, _SMALLEST_SHARE))


@dataclass(frozen=True)
class LayerSpectrum:
    """What the selection needs to know about one factorable layer."""

    name: str
    singular_values: Tensor  # (min(out, in),) float64, descending
    out_dim: int
    in_dim: int
    positions: float  # output positions per forward pass: dense MACs = out * in * positions
    bias: int  # bias parameters (kept by the second layer of a pair)
    floor: int  # smallest rank allowed (min_rank / min_energy)

    @property
    def cheapest_useful(self) -> int:
        """Largest rank whose pair is still smaller than the dense layer."""
        return (self.out_dim * self.in_dim - 1) // (self.out_dim + self.in_dim)

    def options(self) -> list[int]:
        top = min(self.cheapest_useful, self.singular_values.numel())
        return [DENSE] + list(range(self.floor, top + 1)) if self.floor <= top else [DENSE]

    def lost(self, rank: int) -> float:
        sq = self.singular_values.pow(2)
        total = float(sq.sum())
        return 0.0 if rank == DENSE or total == 0 else float(sq[rank:].sum()) / total

    def macs(self, rank: int) -> float:
        width = self.out_dim * self.in_dim if rank == DENSE else rank * (self.out_dim + self.in_dim)
        return width * self.positions

    def params(self, rank: int) -> float:
        width = self.out_dim * self.in_dim if rank == DENSE else rank * (self.out_dim + self.in_dim)
        return width + self.bias


@dataclass(frozen=True)
class Totals:
    """The dense model's totals; what the candidate layers do not cover stays fixed."""

    macs: float
    params: float


def _fractions(layers: list[LayerSpectrum], ranks: list[int], totals: Totals) -> dict[str, float]:
    macs = totals.macs + sum(l.macs(r) - l.macs(DENSE) for l, r in zip(layers, ranks, strict=True))
    params = totals.params + sum(l.params(r) - l.params(DENSE) for l, r in zip(layers, ranks, strict=True))
    return {"macs": macs / max(1.0, totals.macs), "params": params / max(1.0, totals.params)}


def _weighted_cost(layer: LayerSpectrum, rank: int, budget: Budget, totals: Totals) -> float:
    """Cost of one option in units of the budget (MACs stand in for latency)."""
    cost = 0.0
    if budget.macs is not None or budget.latency_ms is not None:
        cost += layer.macs(rank) / max(1.0, totals.macs) / (budget.macs or 1.0)
    if budget.params is not None:
        cost += layer.params(rank) / max(1.0, totals.params) / budget.params
    return cost


def _pick(layers: list[LayerSpectrum], lam: float, budget: Budget, totals: Totals, criterion: RankCriterion) -> list[int]:
    def objective(layer: LayerSpectrum, rank: int) -> float:
        return criterion.damage(layer.lost(rank)) + lam * _weighted_cost(layer, rank, budget, totals)

    return [min(l.options(), key=lambda r, l=l: objective(l, r)) for l in layers]


def select_ranks(
    layers: list[LayerSpectrum],
    budget: Budget,
    totals: Totals,
    meets: Callable[[list[int], dict[str, float]], bool],
    criterion: RankCriterion = RankCriterion.LOG_KEPT,
) -> list[int]:
    """Rank per layer (``DENSE`` to keep it) meeting ``budget`` with the least damage by ``criterion``.

    ``meets(ranks, fractions)`` says whether a choice holds (the caller measures latency
    there when the budget has one). Raises ``ValueError`` with the smallest reachable
    fractions when even every layer at its floor rank does not meet the budget."""
    floors = [min(l.options()[1:], default=DENSE) for l in layers]
    if not meets(floors, _fractions(layers, floors, totals)):
        raise ValueError(_fractions(layers, floors, totals))
    dense = [DENSE] * len(layers)
    if meets(dense, _fractions(layers, dense, totals)):
        return dense
    lo, hi = 0.0, 1.0
    while not meets(ranks := _pick(layers, hi, budget, totals, criterion), _fractions(layers, ranks, totals)):
        hi *= 4.0
        if hi > 1e12:
            return floors  # the multiplier cannot get cheaper than the floors, which meet
    for _ in range(60):
        mid = (lo + hi) / 2
        ranks = _pick(layers, mid, budget, totals, criterion)
        if meets(ranks, _fractions(layers, ranks, totals)):
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-9 * hi:
            break
    return _spend_slack(layers, _pick(layers, hi, budget, totals, criterion), budget, totals, meets, criterion)


def _spend_slack(layers: list[LayerSpectrum], ranks: list[int], budget: Budget, totals: Totals,
                 meets: Callable[[list[int], dict[str, float]], bool], criterion: RankCriterion) -> list[int]:  # fmt: skip
    """Raise ranks one at a time where the damage undone per unit of cost is highest."""
    ranks = list(ranks)
    blocked: set[int] = set()
    while True:
        best, best_gain = -1, 0.0
        for i, (layer, r) in enumerate(zip(layers, ranks, strict=True)):
            if i in blocked or r == DENSE:
                continue
            nxt = r + 1 if r + 1 <= min(layer.cheapest_useful, layer.singular_values.numel()) else DENSE
            extra = _weighted_cost(layer, nxt, budget, totals) - _weighted_cost(layer, r, budget, totals)
            gain = criterion.damage(layer.lost(r)) - criterion.damage(layer.lost(nxt))
            ratio = gain / extra if extra > 0 else math.inf
            if gain > 0 and ratio > best_gain:
                best, best_gain = i, ratio
        if best < 0:
            return ranks
        trial = list(ranks)
        layer = layers[best]
        trial[best] = ranks[best] + 1 if ranks[best] + 1 <= min(layer.cheapest_useful, layer.singular_values.numel()) else DENSE
        if meets(trial, _fractions(layers, trial, totals)):
            ranks = trial
        else:
            blocked.add(best)


def spectrum_floor(singular_values: Tensor, min_rank: int, min_energy: float | None) -> int:
    """Smallest rank allowed: at least ``min_rank`` and enough to keep ``min_energy``."""
    floor = max(1, min_rank)
    if min_energy is not None:
        sq = singular_values.double().pow(2)
        total = float(sq.sum())
        if total > 0:
            floor = max(floor, int((torch.cumsum(sq, 0) / total < min_energy - 1e-12).sum()) + 1)
    return floor
