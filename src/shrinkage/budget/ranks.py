"""Ranks chosen globally under a budget, instead of one energy for every layer.

Each candidate layer ``l`` (weight ``out x in``, ``in = C*kh*kw`` for a conv) either stays
dense or becomes a rank-``r`` pair costing ``r * (in + out)`` MACs per output position
(and ``r * (in + out)`` parameters) instead of ``in * out``. Truncating to rank ``r``
loses the energy ``e_l(r) = sum_{i >= r} sigma_i^2 / sum_i sigma_i^2``, normalized per
layer so that layers trained at different scales compare.

We minimize ``sum_l e_l(r_l)`` subject to the budget. With a multiplier ``lam``, each
layer independently picks ``argmin_r e_l(r) + lam * cost_l(r)``; the total cost falls as
``lam`` grows, so bisection on ``lam`` finds the cheapest trade-off that fits. Because
``e_l`` is convex in ``r`` (its decrements ``sigma_r^2`` shrink) this is the greedy
"drop the singular value that loses least energy per MAC saved" done exactly. Slack
left by the last jump is then spent greedily, one rank at a time, on the layer that
regains the most energy per unit of cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from shrinkage.budget.spec import Budget

DENSE = -1  # the layer is left as it is


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


def _pick(layers: list[LayerSpectrum], lam: float, budget: Budget, totals: Totals) -> list[int]:
    return [min(l.options(), key=lambda r, l=l: l.lost(r) + lam * _weighted_cost(l, r, budget, totals)) for l in layers]


def select_ranks(
    layers: list[LayerSpectrum],
    budget: Budget,
    totals: Totals,
    meets: Callable[[list[int], dict[str, float]], bool],
) -> list[int]:
    """Rank per layer (``DENSE`` to keep it) meeting ``budget`` with the least energy lost.

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
    while not meets(ranks := _pick(layers, hi, budget, totals), _fractions(layers, ranks, totals)):
        hi *= 4.0
        if hi > 1e12:
            return floors  # the multiplier cannot get cheaper than the floors, which meet
    for _ in range(60):
        mid = (lo + hi) / 2
        ranks = _pick(layers, mid, budget, totals)
        if meets(ranks, _fractions(layers, ranks, totals)):
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-9 * hi:
            break
    return _spend_slack(layers, _pick(layers, hi, budget, totals), budget, totals, meets)


def _spend_slack(layers: list[LayerSpectrum], ranks: list[int], budget: Budget, totals: Totals,
                 meets: Callable[[list[int], dict[str, float]], bool]) -> list[int]:  # fmt: skip
    """Raise ranks one at a time where the energy regained per unit of cost is highest."""
    ranks = list(ranks)
    blocked: set[int] = set()
    while True:
        best, best_gain = -1, 0.0
        for i, (layer, r) in enumerate(zip(layers, ranks, strict=True)):
            if i in blocked or r == DENSE:
                continue
            nxt = r + 1 if r + 1 <= min(layer.cheapest_useful, layer.singular_values.numel()) else DENSE
            extra = _weighted_cost(layer, nxt, budget, totals) - _weighted_cost(layer, r, budget, totals)
            gain = layer.lost(r) - layer.lost(nxt)
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
