"""Which rows and columns of which layers each group removes, and what layers cost.

Built once per model for :class:`shrinkage.optim.estimators.StructureMacEstimator`. A
layer (conv, linear, attention) is seen as ``N`` rows (filters, output neurons, heads)
times ``K`` im2col columns (``C*kh*kw``, input neurons; 1 for attention), and ``M`` MACs
that scale with both. A group that is exactly zero removes :class:`Removal` s: positions
along one axis of one layer. The builders are keyed by group kind (no dispatch on names).

A :class:`Space` is a channel space of the dependency graph (the same one coupled groups
are built from): the rows that produce each channel and the columns that read it. As in
compaction, a channel goes when all its producing rows or all its reading columns are
removed, and then every slice of it goes (a zero conv1 filter frees a conv2 input
channel; a conv2 input channel whose columns are all zero frees a conv1 filter).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from shrinkage.errors import ConfigError, ShrinkageError
from shrinkage.groups import Channels, CoupledChannels, Depth, Filters, GroupKind, Heads, Matrix, Shapes
from shrinkage.groups.base import AxisGrouping, ColumnGrouping, SliceGrouping
from shrinkage.layers import head_layout
from shrinkage.optim.regularizer import Regularizer, Term
from shrinkage.penalties import NuclearNorm

log = logging.getLogger(__name__)

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

#: singular values at or below this fraction of the largest count as zero (the float32
#: round trip of singular value thresholding leaves ~1e-7 where the prox put exact zeros)
RANK_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Layer:
    """``macs`` of one forward pass over ``outputs`` rows and ``inputs`` columns, of which
    ``per_channel`` consecutive ones (``kh*kw``) read one input channel."""

    macs: float
    outputs: int
    inputs: int
    per_channel: int = 1


@dataclass(frozen=True)
class Removal:
    """Group ``g`` removes positions ``index[g]`` along ``axis`` (0: rows, 1: columns) of ``layer``."""

    layer: str
    axis: int
    index: Tensor  # (n_groups, k) long


@dataclass(frozen=True)
class Space:
    """Channel ``c`` is produced by ``rows[*].index[c]`` and read by ``cols[*].index[c]``;
    a side left empty is unknown (read by an operation without a layer weight), and never
    frees the channel."""

    rows: tuple[Removal, ...]
    cols: tuple[Removal, ...]


@dataclass(frozen=True)
class GroupCost:
    """What each zero group of a term removes: layer positions, and ``flat`` MACs that add
    up directly (a depth group's block)."""

    removals: tuple[Removal, ...]
    flat: Tensor  # (n_groups,) float64


def rank_from(singular_values: Tensor) -> int:
    """Number of singular values above ``RANK_TOLERANCE`` times the largest."""
    top = float(singular_values.max()) if singular_values.numel() else 0.0
    return int((singular_values > RANK_TOLERANCE * top).sum()) if top > 0 else 0


@dataclass
class _Context:
    """The model, its per-module MACs, parameter owners, and the layers met so far."""

    model: nn.Module
    macs: dict[str, int]
    owner: dict[int, tuple[str, str]]  # id(param) -> (module name, attribute)
    layers: dict[str, Layer] = field(default_factory=dict)

    def weight_layer(self, name: str) -> Layer:
        if name not in self.layers:
            w = cast(Tensor, self.model.get_submodule(name).weight)
            self.layers[name] = Layer(float(self.macs.get(name, 0)), w.shape[0], w[0].numel(), math.prod(w.shape[2:]))
        return self.layers[name]

    def removal(self, param: Tensor, dim: int, index: Tensor) -> Removal | None:
        """The layer positions a slice ``index`` along ``dim`` of ``param`` occupies; ``None``
        for anything but a conv/linear weight (biases and norm scales cost no MACs)."""
        name, attr = self.owner.get(id(param), ("", ""))
        return self.named_removal(name, attr, dim, index)

    def named_removal(self, name: str, attr: str, dim: int, index: Tensor) -> Removal | None:
        module = self.model.get_submodule(name) if attr else None
        if attr != "weight" or not isinstance(module, _LAYERS):
            return None
        self.weight_layer(name)
        ndim, index = module.weight.dim(), index.cpu()
        if dim % ndim == 0:
            return Removal(name, 0, index)
        grouped = not isinstance(module, nn.Linear) and module.groups != 1
        if dim % ndim == 1 and not grouped:
            k = math.prod(module.weight.shape[2:])  # a channel is kh*kw im2col columns
            columns = index.unsqueeze(-1) * k + torch.arange(k)
            return Removal(name, 1, columns.reshape(index.shape[0], -1))
        return None


def _slices(term: Term) -> list[tuple[Tensor, int, Tensor]]:
    grouping = term.grouping
    if isinstance(grouping, AxisGrouping):
        n = grouping.param.shape[grouping.dim]
        return [(grouping.param, grouping.dim, torch.arange(n).unsqueeze(1))]
    if isinstance(grouping, SliceGrouping):
        return list(grouping.members)
    raise ConfigError(f"{term.label}: no MAC cost for a {type(grouping).__name__}")


def _none(n: int) -> Tensor:
    return torch.zeros(n, dtype=torch.float64)


def _slice_costs(term: Term, ctx: _Context) -> GroupCost:
    """Filters, channels and coupled channels: the layer slices of every member."""
    found = (ctx.removal(p, dim, idx) for p, dim, idx in _slices(term))
    return GroupCost(tuple(r for r in found if r is not None), _none(term.grouping.shape[0]))


def _shape_costs(term: Term, ctx: _Context) -> GroupCost:
    grouping = term.grouping
    if not isinstance(grouping, ColumnGrouping):
        raise ConfigError(f"{term.label}: shape groups must be im2col columns")
    columns = ctx.weight_layer(grouping.label).inputs
    return GroupCost((Removal(grouping.label, 1, torch.arange(columns).unsqueeze(1)),), _none(columns))


def _depth_costs(term: Term, ctx: _Context) -> GroupCost:
    return GroupCost((), torch.tensor([float(ctx.macs.get(term.grouping.label, 0))], dtype=torch.float64))


def _head_costs(term: Term, ctx: _Context) -> GroupCost:
    name = term.grouping.label
    heads = head_layout(name, ctx.model.get_submodule(name)).heads
    ctx.layers[name] = Layer(float(ctx.macs.get(name, 0)), heads, 1)  # every MAC of attention is per head
    return GroupCost((Removal(name, 0, torch.arange(heads).unsqueeze(1)),), _none(heads))


#: group kind -> what its zero groups remove; a kind not listed here (nor a base class) has no estimate
GROUP_COSTS: dict[type[GroupKind], Callable[[Term, _Context], GroupCost]] = {
    Filters: _slice_costs,
    Channels: _slice_costs,
    CoupledChannels: _slice_costs,
    Shapes: _shape_costs,
    Depth: _depth_costs,
    Heads: _head_costs,
}


def build_costs(
    regularizer: Regularizer, model: nn.Module, example_inputs: tuple[Any, ...], per_module: dict[str, int]
) -> tuple[dict[str, Layer], list[GroupCost | Layer], list[Space]]:
    """The layers groups remove positions of, per term its :class:`GroupCost` (or, for a
    nuclear norm, the :class:`Layer` it factorizes), and the model's channel spaces."""
    owner = {id(p): (m, a) for m, mod in model.named_modules() for a, p in mod.named_parameters(recurse=False)}
    ctx = _Context(model, dict(per_module), owner)
    costs: list[GroupCost | Layer] = []
    for term in regularizer.terms:
        if isinstance(term.penalty, NuclearNorm):
            if not isinstance(term.kind, Matrix):
                raise ConfigError(f"{term.label}: a nuclear norm needs matrix groups to estimate its MACs")
            rows, cols = term.grouping.shape
            costs.append(Layer(float(per_module.get(term.grouping.label, 0)), rows, cols))
            continue
        builder = next((GROUP_COSTS[c] for c in type(term.kind).__mro__ if c in GROUP_COSTS), None)
        if builder is None or not term.penalty.induces_zeros:
            raise ConfigError(
                f"{term.label}: no MAC estimate for {type(term.kind).__name__} groups "
                f"under {type(term.penalty).__name__}"
            )
        costs.append(builder(term, ctx))
    return ctx.layers, costs, _spaces(ctx, example_inputs)


def _spaces(ctx: _Context, example_inputs: Sequence[Any]) -> list[Space]:
    """The channel spaces produced by the model's layers. Empty when the model cannot be
    traced from a single tensor input: then no removal frees another layer's slices.

    The graph is traced on a CPU copy (the model may be on an accelerator, and tracing
    runs it: BatchNorm statistics would move); members map back by parameter name.
    """
    if len(example_inputs) != 1 or not isinstance(example_inputs[0], Tensor):
        return []
    example = example_inputs[0]
    vocab = None if example.is_floating_point() else int(example.max()) + 1
    twin = copy.deepcopy(ctx.model).cpu()
    names = {id(p): name.rpartition(".") for name, p in twin.named_parameters()}
    layers = [(n, m) for n, m in twin.named_modules() if isinstance(m, _LAYERS)]
    try:
        groupings = CoupledChannels(tuple(example.shape), vocab).build_for(twin, layers)
    except ShrinkageError as error:
        log.info("MAC estimate: no dependency graph, removals are not propagated (%s)", error)
        return []
    spaces = []
    for grouping in groupings:
        if not isinstance(grouping, SliceGrouping):
            continue
        sides: dict[int, list[Removal]] = {0: [], 1: []}
        unknown = set()
        for param, dim, index in grouping.members:
            module, _, attr = names.get(id(param), ("", "", ""))
            found = ctx.named_removal(module, attr, dim, index)
            if found is not None:
                sides[found.axis].append(found)
            elif param.dim() >= 2:  # read or written by something that is not a layer weight
                unknown.add(0 if dim % param.dim() == 0 else 1)
        spaces.append(Space(*(tuple(sides[a]) if a not in unknown else () for a in (0, 1))))
    return spaces
