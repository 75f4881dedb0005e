"""Which groups a budget controller's penalty acts on: all of them, or the weakest only.

A group Lasso on every group shrinks the groups a budget keeps as much as those it
removes: on a ResNet-20 trained to half its MACs the penalty was 5 to 30 times the loss
during the ramp, and the kept channels paid for it in accuracy. With **focus**, each
controller update ranks the groups by how cheaply they go per MAC they save, takes the
weakest ones whose removal would reach the budget less a margin, and weighs the penalty
1 on those and 0 on the rest: the rest train as without regularization, the chosen ones
are driven to zero at the pace the controller sets. The choice is remade at every update
from the current weights, so a group that the task needs grows out of the set; one that
is shrinking stays in it (its score only falls).

**The score** of group ``g`` of term ``t`` is ``||w_g|| / (u_g * c_t)``: the steps the
prox at unit strength needs to zero it (``u_g``, its shrink per step, see
``StructureMacEstimator.unit_shrink``) per MAC its removal saves (``c_t``, the term's
mean, ``StructureMacEstimator.group_costs``). Zero groups score 0 and are always chosen.

**The margin** (relative, like the gate's slack): the chosen groups would leave
``budget * (1 - margin)`` of the MACs. Without it the set is exactly what the budget
needs and every chosen group must go, however much the loss resists; with it the
controller's gate, which admits zeros only down to the target, lets the most resisting
tenth survive.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from shrinkage.errors import ConfigError
from shrinkage.optim.estimators import StructureMacEstimator
from shrinkage.optim.regularizer import Regularizer
from shrinkage.penalties import GroupLasso


class Focus:
    """Chooses, and sets as the regularizer's group weights, the groups to penalize."""

    def __init__(self, regularizer: Regularizer, estimator: StructureMacEstimator, margin: float) -> None:
        for term in regularizer.terms:
            if not isinstance(term.penalty, GroupLasso):
                raise ConfigError(
                    f"controller.focus: term {term.label} has a {type(term.penalty).__name__} penalty; "
                    "focus weighs group_lasso groups only"
                )
        self.regularizer, self.estimator, self.margin = regularizer, estimator, margin
        self.costs = [max(c, 1e-12) for c in estimator.group_costs()]

    @torch.no_grad()
    def choose(self, summaries: Sequence[Tensor], unit_shrink: Sequence[Tensor], budget: float) -> list[Tensor]:
        """Per term, a 0/1 weight per group: 1 for the weakest groups per MAC whose
        removal leaves at most ``budget * (1 - margin)`` of the MACs (all groups when even
        that does not). Sets them on the regularizer and returns them."""
        scores, where = [], []
        for i, (norms, unit) in enumerate(zip(summaries, unit_shrink, strict=True)):
            norms, unit = norms.double().cpu(), unit.double().cpu()
            scores.append(norms / (unit.clamp_min(1e-300) * self.costs[i]))
            where += [(i, g) for g in range(norms.numel())]
        order = torch.cat(scores).argsort(stable=True).tolist()
        goal = budget * (1.0 - self.margin)

        def left_after(k: int) -> float:
            trial = [s.double().cpu().clone() for s in summaries]
            for position in order[:k]:
                i, g = where[position]
                trial[i][g] = 0.0
            return self.estimator.from_summaries(trial)

        low, high = 0, len(order)
        if left_after(high) > goal:
            low = high = len(order)  # even every group is not enough: penalize them all
        elif left_after(low) <= goal:
            high = 0  # the zeros already there reach it
        while high - low > 1:  # left_after(low) > goal >= left_after(high)
            mid = (low + high) // 2
            low, high = (low, mid) if left_after(mid) <= goal else (mid, high)
        high = max(high, sum(int((s == 0).sum()) for s in summaries))  # zeros score 0: first in order
        weights = [torch.zeros(s.numel(), dtype=torch.float64) for s in summaries]
        for position in order[:high]:
            i, g = where[position]
            weights[i][g] = 1.0
        for i, w in enumerate(weights):
            self.regularizer.set_group_weights(i, w)
        return weights

    def _weights(self) -> list[Tensor] | None:
        """The regularizer's group weights (the choice, kept in one place: they travel in its
        state), or None before the first choice."""
        weights = self.regularizer.group_weights
        if len(weights) != len(self.regularizer.terms):
            return None
        return [weights[i] for i in range(len(self.regularizer.terms))]

    def weighted(self, unit_shrink: Sequence[Tensor]) -> list[Tensor]:
        """``unit_shrink`` as the penalty now applies it: zero on the groups not chosen."""
        chosen = self._weights()
        if chosen is None:
            return list(unit_shrink)
        return [u * w.to(u.device, u.dtype) for u, w in zip(unit_shrink, chosen, strict=True)]

    def fraction_chosen(self) -> float:
        """The fraction of all groups the penalty acts on (1 before the first choice)."""
        chosen = self._weights()
        if chosen is None:
            return 1.0
        return float(sum(float(w.sum()) for w in chosen) / max(1, sum(w.numel() for w in chosen)))
