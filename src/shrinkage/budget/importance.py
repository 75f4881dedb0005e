"""How much removing a group would hurt: the numerator of ``prune()``'s ranking.

:func:`shrinkage.prune` removes groups in order of *damage per unit of budget saved*.
Dividing by the saving only makes sense when the damage of a channel in one layer and a
channel in another are on one scale. Two estimates are offered, one object each (pass
one as ``prune(..., importance=...)``; subclass :class:`Importance` for another):

* :class:`GroupNorm` needs no data: a group's squared norm relative to the mean of its
  unit. It is scale-free within a layer but not across layers: a channel of a 16-wide
  stage and one of a 64-wide stage both score about 1, while the narrow one saves four
  times the MACs, so per MAC saved the narrow stages go first. On ResNet-20 at 50% MACs
  it removed all three first-stage branches and 15 of the 16 channels of that stage's stream.
* :class:`Taylor` measures it on data: the first-order Taylor estimate of the change in
  loss when a group is zeroed, ``(sum over its weights of w * dL/dw)^2`` averaged over a
  few batches (Molchanov et al., "Importance Estimation for Neural Network Pruning",
  CVPR 2019). Its unit is the loss, the same for every layer, so the ratio to the MACs
  saved ranks layers against each other.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shrinkage.budget.candidates import Unit
from shrinkage.errors import ConfigError

__all__ = ["DEFAULT_BATCHES", "GroupNorm", "Importance", "Taylor"]

#: calibration batches the Taylor estimate averages over unless told otherwise
DEFAULT_BATCHES = 16


class Importance(ABC):
    """Estimated damage of removing each group, on one scale across all units."""

    @abstractmethod
    def of_groups(self, model: nn.Module, units: Sequence[Unit]) -> list[Tensor]:
        """Per unit, a float64 ``(unit.size,)`` tensor: the damage of removing each group
        alone (0 for a group that is already zero). ``model`` owns the units' parameters."""

    def of_whole(self, units: Sequence[Unit], groups: Sequence[Tensor]) -> list[float]:
        """Per unit, the damage of removing all of its groups at once (depth). Default:
        the sum of its groups' damages."""
        return [float(g.sum()) for g in groups]


class GroupNorm(Importance):
    """Squared L2 norm of each group relative to its unit's mean (no data needed).

    A whole unit (a residual branch) is weighed by its total norm against the mean total
    of the units that could go whole, so a branch weaker than the average branch goes
    before an average channel. A group whose weights are zero already (``Unit.zero``: only
    its shift is left) costs nothing."""

    def of_groups(self, model: nn.Module, units: Sequence[Unit]) -> list[Tensor]:
        out = []
        for unit in units:
            mean = unit.norms.mean()
            relative = unit.norms / mean if mean > 0 else torch.zeros_like(unit.norms)
            out.append(relative.masked_fill(unit.zero, 0.0))
        return out

    def of_whole(self, units: Sequence[Unit], groups: Sequence[Tensor]) -> list[float]:
        totals = [float(u.norms.sum()) for u in units if u.depth_ok and u.is_channels]
        mean_total = sum(totals) / len(totals) if totals else 0.0
        return [u.size * float(u.norms.sum()) / mean_total if mean_total > 0 else 0.0 for u in units]


Batch = tuple[Any, ...]


def _cross_entropy(model: nn.Module, batch: Batch) -> Tensor:
    inputs, targets = batch[0], batch[1]
    return F.cross_entropy(model(inputs), targets)


class Taylor(Importance):
    """First-order Taylor estimate of the loss increase when a group is zeroed.

    ``batches`` yields tuples (by default ``(inputs, targets)`` for a classifier); the
    first ``max_batches`` are used. ``loss(model, batch)`` returns the scalar loss of one
    batch (default: cross-entropy of ``model(batch[0])`` against ``batch[1]``; give
    your own for a model with other inputs or outputs). Gradients are taken in eval
    mode (BatchNorm on its running statistics, dropout off): the model being judged is
    the one that will be compacted, not one of its training-mode variants.
    """

    def __init__(self, batches: Iterable[Batch], *, loss: Callable[[nn.Module, Batch], Tensor] = _cross_entropy,
                 max_batches: int = DEFAULT_BATCHES) -> None:  # fmt: skip
        if isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1:
            raise ConfigError(f"Taylor: max_batches must be an integer >= 1, got {max_batches!r}")
        self.batches = batches
        self.loss = loss
        self.max_batches = max_batches

    def of_groups(self, model: nn.Module, units: Sequence[Unit]) -> list[Tensor]:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        totals = [torch.zeros(u.size, dtype=torch.float64) for u in units]
        was_training = model.training
        model.eval()
        seen = 0
        try:
            for batch in itertools.islice(self.batches, self.max_batches):
                batch = tuple(x.to(device) if isinstance(x, Tensor) else x for x in batch)
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    loss = self.loss(model, batch)
                    if not isinstance(loss, Tensor) or loss.dim() != 0:
                        raise ConfigError("Taylor: loss(model, batch) must return a scalar tensor")
                    loss.backward()
                for total, unit in zip(totals, units, strict=True):
                    total += _first_order(unit).pow(2)
                seen += 1
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        if seen == 0:
            raise ConfigError("Taylor: the calibration batches are empty")
        return [t / seen for t in totals]


def _first_order(unit: Unit) -> Tensor:
    """Per group, ``sum(w * dL/dw)`` over every slice the group holds (producer rows,
    per-channel parameters, consumers' columns): the loss change to first order when the
    whole group is set to zero is minus this."""
    out = torch.zeros(unit.size, dtype=torch.float64)
    for p, dim, index in unit.grouping.members:
        if p.grad is None:
            continue  # frozen, or not on the loss's path: zeroing it changes nothing to first order
        product = (p.detach() * p.grad).index_select(dim, index.reshape(-1)).movedim(dim, 0)
        out += product.reshape(unit.size, -1).sum(dim=1).double().cpu()
    return out
