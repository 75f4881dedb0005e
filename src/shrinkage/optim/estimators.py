"""What fraction of the dense model's MACs would be left after compaction.

Two estimators share the :class:`MacEstimator` interface:

* :class:`StructureMacEstimator`, cheap enough to run every step. Its costs come once
  from ``count_macs(model, example).per_module`` and the groupings' shapes
  (:mod:`shrinkage.optim.costs`). A layer with ``M`` MACs, ``N`` rows (filters, output
  neurons, heads) and ``K`` im2col columns keeps ``M * (kept rows / N) * (kept columns
  / K)``. A group that is exactly zero removes rows or columns: a filter its row, a
  channel its ``kh*kw`` columns, a shape column one column, a head its share of the
  attention, a coupled group every member's slice. As in compaction, a channel that no
  row produces any more or no column reads any more goes everywhere (a zero conv1
  filter frees a conv2 input channel), and a conv's partial columns count only once it
  would be lowered (``CompactOptions.lower_min_fraction`` of its kept channels' columns).
  A depth group saves its block's MACs; a nuclear-norm term with ``r`` singular values
  above ``RANK_TOLERANCE`` of the largest saves ``positions * (out*in - min(out*in,
  r*(out+in)))``, ``positions = M / (out*in)``: what factorization at that rank gives.
  This is a *linearized* estimate: depth and rank savings add to the rest, whatever
  else zeroed the same layer; a dead channel's constant is assumed foldable
  (compaction cannot fold a non-zero one into a padded conv); input selection is
  assumed to pay however few inputs go. The controller rescales it by the exact count
  now and then.
* :class:`ExactMacEstimator`: compacts (and, for nuclear-norm layers, factorizes at each
  layer's current rank) a copy of the model and counts its MACs. Slow, and the truth.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from shrinkage.compact.plan import CompactOptions
from shrinkage.errors import ConfigError
from shrinkage.metrics.size import count_macs
from shrinkage.optim.costs import RANK_TOLERANCE, GroupCost, Layer, build_costs, rank_from
from shrinkage.optim.regularizer import Regularizer, Term
from shrinkage.penalties import NuclearNorm

log = logging.getLogger(__name__)

__all__ = ["RANK_TOLERANCE", "ExactMacEstimator", "MacEstimator", "StructureMacEstimator"]


class MacEstimator(ABC):
    """Estimates ``MACs after compaction / dense MACs`` of the model it was built for."""

    @abstractmethod
    def estimate(self, model: nn.Module) -> float: ...


def summary_of(term: Term, matrix: Tensor) -> Tensor:
    """What the estimate reads of a term's matrix, on the CPU in float64: its singular
    values for a nuclear norm, else its group norms."""
    m = matrix.detach().double()
    summary: Tensor = (torch.linalg.svdvals(m) if isinstance(term.penalty, NuclearNorm) else m.norm(dim=1)).cpu()
    return summary


class StructureMacEstimator(MacEstimator):
    """The cheap estimate (see the module docstring), built once per model.

    It reads *summaries* of the terms' ``(n_groups, size)`` matrices: group norms, or
    singular values for nuclear-norm terms. Their zeros are the removed structures, and
    summaries can be extrapolated (:class:`shrinkage.optim.forecast.Forecast`).
    """

    def __init__(self, regularizer: Regularizer, model: nn.Module, example_inputs: tuple[Any, ...],
                 layers: Collection[str] | None = None) -> None:  # fmt: skip
        # layers: only these modules' MACs count (a scoped budget); every layer's cost is
        # then its MACs inside them, so a saving elsewhere estimates as none
        counted = count_macs(model, example_inputs, layers)
        if counted.total <= 0:
            raise ConfigError("the model performs no counted MACs on the example inputs; nothing to budget")
        self.dense = float(counted.total)
        self.terms = regularizer.terms
        self.layers, self.costs, self.spaces = build_costs(regularizer, model, example_inputs, counted.per_module)

    @torch.no_grad()
    def summaries(self, matrices: Sequence[Tensor] | None = None) -> list[Tensor]:
        """Each term's summary of its current weights, or of hypothetical ``matrices``
        given in the order of ``regularizer.terms``."""
        if matrices is None:
            matrices = [t.grouping.gather() for t in self.terms]
        return [summary_of(term, m) for term, m in zip(self.terms, matrices, strict=True)]

    def from_summaries(self, summaries: Sequence[Tensor]) -> float:
        """``1 - saved / dense`` for these summaries, clipped to [0, 1]."""
        removed: dict[tuple[str, int], Tensor] = {}
        saved = 0.0
        for cost, summary in zip(self.costs, summaries, strict=True):
            summary = summary.cpu()  # the layer positions are indexed on the CPU
            if isinstance(cost, Layer):  # a nuclear-norm term: savings of factorization at its rank
                full = cost.outputs * cost.inputs
                positions = cost.macs / full
                saved += positions * (full - min(full, rank_from(summary) * (cost.outputs + cost.inputs)))
                continue
            zero = summary == 0
            saved += float(cost.flat[zero].sum())
            for r in cost.removals:
                self._mask(removed, r.layer, r.axis)[r.index[zero].reshape(-1)] = True
        self._propagate(removed)
        for name, layer in self.layers.items():
            rows, cols = removed.get((name, 0)), removed.get((name, 1))
            if cols is not None and layer.per_channel > 1:
                cols = _paying_columns(cols, layer.per_channel)
            kept_rows = 1.0 - float(rows.float().mean()) if rows is not None else 1.0
            kept_cols = 1.0 - float(cols.float().mean()) if cols is not None else 1.0
            saved += layer.macs * (1.0 - kept_rows * kept_cols)
        return min(1.0, max(0.0, 1.0 - saved / self.dense))

    def saves_nothing(self, index: int) -> bool:
        """Whether term ``index`` could not save a counted MAC even with all its groups but
        one zero (the neurons of a fully connected layer under a budget of the conv layers'
        MACs). Not judged one group at a time: one column of a Linear frees nothing, a
        conv channel's worth of them frees the channel. A term of one group (a residual
        branch under ``Depth``) is judged with that group zero."""
        cost = self.costs[index]
        if isinstance(cost, Layer):
            return cost.macs == 0
        trial = [torch.ones(_entries(c)) for c in self.costs]
        trial[index].zero_()
        if trial[index].numel() > 1:
            trial[index][0] = 1.0
        return self.from_summaries(trial) >= 1.0

    def group_costs(self) -> list[float]:
        """Per term, the mean MACs one of its groups saves when it alone is zero (what
        compaction would then remove, the channels it frees included; sampled over up to
        16 groups), or for a nuclear norm one singular value's ``positions * (out + in)``."""
        dense = [torch.ones(_entries(cost)) for cost in self.costs]
        out = []
        for i, cost in enumerate(self.costs):
            if isinstance(cost, Layer):
                out.append(cost.macs / (cost.outputs * cost.inputs) * (cost.outputs + cost.inputs))
                continue
            n = cost.flat.numel()
            saved = []
            for g in torch.linspace(0, n - 1, min(n, 16)).round().long().unique().tolist():
                trial = [d.clone() for d in dense]
                trial[i][g] = 0.0
                saved.append((1.0 - self.from_summaries(trial)) * self.dense)
            out.append(sum(saved) / len(saved) if saved else 0.0)
        return out

    def _mask(self, removed: dict[tuple[str, int], Tensor], layer: str, axis: int) -> Tensor:
        if (layer, axis) not in removed:
            size = self.layers[layer].outputs if axis == 0 else self.layers[layer].inputs
            removed[(layer, axis)] = torch.zeros(size, dtype=torch.bool)
        return removed[(layer, axis)]

    def _propagate(self, removed: dict[tuple[str, int], Tensor]) -> None:
        """Remove every slice of the channels that nothing produces or nothing reads any more,
        until no channel changes (a few passes: each frees the next layer's channels)."""
        for _ in range(len(self.spaces) + 1):
            changed = False
            for space in self.spaces:
                gone = None
                for side in (space.rows, space.cols):
                    if not side or not all((r.layer, r.axis) in removed for r in side):
                        continue  # a side with a slice nothing removed from frees nothing
                    freed = torch.stack([removed[(r.layer, r.axis)][r.index].all(dim=1) for r in side]).all(dim=0)
                    gone = freed if gone is None else gone | freed
                if gone is None or not bool(gone.any()):
                    continue
                for r in space.rows + space.cols:
                    mask = self._mask(removed, r.layer, r.axis)
                    index = r.index[gone].reshape(-1)
                    if not bool(mask[index].all()):
                        mask[index] = True
                        changed = True
            if not changed:
                return

    def estimate(self, model: nn.Module | None = None) -> float:
        """The estimate from the terms' current weights (``model`` is the one built for)."""
        return self.from_summaries(self.summaries())

    @torch.no_grad()
    def unit_shrink(self, lrs: dict[int, float]) -> list[Tensor]:
        """How much one optimizer step's prox at strength scale 1 shrinks each summary entry:
        ``d summary / d scale`` per step, probed on a float64 copy with a tiny step (for the
        group Lasso ``lr * strength * c`` per group, for the nuclear norm ``lr * strength``
        per singular value; a term with ``every = k`` averages to the same per step)."""
        matrices = [t.grouping.gather().detach().double() for t in self.terms]
        shrunk = []
        for term, matrix in zip(self.terms, matrices, strict=True):
            m = matrix.clone()
            term.penalty.prox_(m, _PROBE * lrs[id(term.grouping.parameters[0])])
            shrunk.append(m)
        return [(a - b) / _PROBE for a, b in zip(self.summaries(matrices), self.summaries(shrunk), strict=True)]


#: compaction replaces a conv by a GEMM over its kept columns only from this fraction on
_LOWER_FROM = CompactOptions().lower_min_fraction


def _entries(cost: GroupCost | Layer) -> int:
    """How many entries a term's summary has: groups, or singular values."""
    return min(cost.outputs, cost.inputs) if isinstance(cost, Layer) else cost.flat.numel()


def _paying_columns(columns: Tensor, per_channel: int) -> Tensor:
    """The removed im2col columns compaction turns into savings: whole input channels
    always; the columns of the channels it keeps only when they make at least
    ``lower_min_fraction`` of those channels' columns (it then lowers the conv)."""
    by_channel = columns.reshape(-1, per_channel)
    whole = by_channel.all(dim=1)
    kept = by_channel[~whole]
    if kept.numel() and float(kept.float().mean()) >= _LOWER_FROM:
        return columns
    return whole.repeat_interleave(per_channel)


#: the probe step of ``unit_shrink``, as a fraction of the lr: small enough that almost no
#: group reaches zero within it, large enough to stay far above float64 rounding
_PROBE = 1e-4


class ExactMacEstimator(MacEstimator):
    """Compacts a copy of the model, factorizes its nuclear-norm layers at their current
    rank and counts its MACs against the dense count (what compaction would really give)."""

    def __init__(self, regularizer: Regularizer, model: nn.Module, example_inputs: tuple[Any, ...],
                 layers: Collection[str] | None = None) -> None:  # fmt: skip
        self.example_inputs = example_inputs
        self.layers = layers  # counted by the dense model's names: compaction keeps them
        self.dense = float(count_macs(model, example_inputs, layers).total)
        self.low_rank = sorted({t.grouping.label for t in regularizer.terms if isinstance(t.penalty, NuclearNorm)})

    @torch.no_grad()
    def estimate(self, model: nn.Module) -> float:
        from shrinkage.compact import ByMacs, CompactOptions, compact, factorize  # builds on optim: import late

        # fewest-MAC forms: a count, so no clock in the training loop
        small = compact(copy.deepcopy(model).eval(), self.example_inputs, CompactOptions(choose_by=ByMacs()))
        energy = {}
        for name in self.low_rank:
            layer = _factorable(small, name)
            if layer is not None:
                energy[layer] = _energy_for_rank(cast(Tensor, small.get_submodule(layer).weight))
        if energy:
            small = factorize(small, energy, layers=sorted(energy))
        return count_macs(small, self.example_inputs, self.layers).total / self.dense


def _factorable(model: nn.Module, name: str) -> str | None:
    """The name under which compaction left layer ``name`` (wrapped as ``name.layer`` when
    it selects its inputs), or ``None`` when it is gone or no longer a plain layer."""
    for candidate in (name, f"{name}.layer"):
        try:
            m = model.get_submodule(candidate)
        except AttributeError:
            continue
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight.numel() > 0:
            return candidate
    return None


def _energy_for_rank(weight: Tensor) -> float:
    """The energy at which ``factorize`` keeps exactly the weight's non-zero singular values."""
    s2 = torch.linalg.svdvals(weight.detach().reshape(weight.shape[0], -1).double()) ** 2
    r, total = rank_from(s2.sqrt()), float(s2.sum())
    if r == 0 or total == 0.0:
        return 1.0
    return min(1.0, float(s2[:r].sum()) / total)
