"""What a budgeted selection may remove, what each removal saves, and how weak it is.

One capture of the model (:func:`shrinkage.graph.capture.capture_channel_graph`) gives the
*units* of removal:

* a channel space (:mod:`shrinkage.graph.spaces`): one group per channel, holding the
  producers' rows, the per-channel parameters passing it on and every consumer's slice
  (the coupled group of :mod:`shrinkage.groups.coupled`), so zeroing a group lets
  compaction remove that channel everywhere at once;
* an attention module: one group per head (q/k/v rows and output columns);
* *depth*: every group of a channel space at once, offered only where something else
  keeps the network connected (a residual branch, an MLP sub-block): the space's
  consumers write into a space that another producer, or the input, also feeds.

Costs are linearized from the dense model's per-module MACs (``torch.utils.flop_counter``):
a channel saves ``MACs(m) * k / size(m, dim)`` in every module ``m`` that holds ``k`` of
its positions along ``dim``; a head saves ``MACs(attention) / heads``. They only order the
candidates; :func:`shrinkage.prune` measures every model it settles on exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

from shrinkage.graph.builder import ChannelGraph, channel_positions, qualified_name
from shrinkage.groups.base import SliceGrouping
from shrinkage.groups.coupled import space_grouping
from shrinkage.groups.kinds import Heads
from shrinkage.layers import HeadPrunedAttention


@dataclass
class Unit:
    """A set of groups removed individually (channels, heads) or all at once (depth).

    ``macs`` / ``params``: ``(n,)`` estimated savings per group; ``norms``: ``(n,)`` squared
    L2 norm of each group in the model as given; ``zero``: ``(n,)`` the groups whose
    weights are exactly zero already, shifts aside (a regularizer's coupled groups leave
    biases and BatchNorm shifts out, see :mod:`shrinkage.groups.coupled`): compaction
    removes those channels whatever constant they still emit."""

    label: str
    grouping: SliceGrouping
    macs: Tensor
    params: Tensor
    norms: Tensor
    #: channels of a space are rounded to ``round_to``; heads are not
    is_channels: bool
    #: removing every group keeps the network connected (a residual branch or sub-block)
    depth_ok: bool
    zero: Tensor

    @property
    def size(self) -> int:
        return int(self.norms.numel())


def _per_channel_macs(graph: ChannelGraph, root: int, macs: dict[str, int]) -> Tensor:
    space = graph.table.get(root)
    n = space.size
    cost = torch.zeros(n, dtype=torch.float64)
    seen: set[tuple[str, int]] = set()
    for s in space.producers:
        if s.attr != "weight" or (s.module, s.dim) in seen:
            continue
        seen.add((s.module, s.dim))
        w = getattr(graph.module(s.module), s.attr)
        cost += macs.get(s.module, 0) / max(1, w.shape[s.dim])
    for use in space.passthrough + space.consumers:
        key = (use.slice.module, use.slice.dim)
        if use.slice.attr != "weight" or key in seen:
            continue
        seen.add(key)
        w = getattr(graph.module(use.slice.module), use.slice.attr)
        share = macs.get(use.slice.module, 0) / max(1, w.shape[use.slice.dim % w.dim()])
        for ch, pos in channel_positions(graph, use, root):
            cost[ch] += share * pos.shape[1]
    return cost


def _bypassed(graph: ChannelGraph, root: int, nodes: dict[str, fx.Node]) -> bool:
    """Does the network stay connected without space ``root``? True when every consumer
    writes into a space that another producer (or the model input) also feeds."""
    space = graph.table.get(root)
    producers = {s.module for s in space.producers}
    for use in space.consumers:
        axis = graph.axes.get(use.node)
        if axis is None:
            return False
        for seg in axis.segments:
            out = graph.table.get(seg.space)
            others = {s.module for s in out.producers} - {use.module} - producers
            if not others and not out.is_input:
                return False
    return bool(space.consumers)


def _squared_norms(grouping: SliceGrouping) -> Tensor:
    with torch.no_grad():
        return grouping.gather().double().pow(2).sum(dim=1)


def find_units(model: nn.Module, graph: ChannelGraph, macs: dict[str, int]) -> list[Unit]:
    """Every removable unit of ``model`` (``graph`` is its capture, ``macs`` its per-module MACs)."""
    params: dict[str, Any] = dict(model.named_parameters())
    nodes = {n.name: n for n in graph.gm.graph.nodes}
    units: list[Unit] = []
    for root in graph.table.roots():
        space = graph.table.get(root)
        if space.pinned or space.is_input or not space.consumers or space.size < 1:
            continue
        if space.heads is not None:
            continue  # attention heads go whole (compaction removes them), never channel by channel
        if not any(qualified_name(s.module, s.attr) in params for s in space.producers):
            continue
        grouping = space_grouping(graph, params, root)
        sizes = torch.full((space.size,), float(grouping.shape[1]), dtype=torch.float64)
        weights = space_grouping(graph, params, root, shifts=False)
        zero = _squared_norms(weights) == 0 if weights.members else torch.zeros(space.size, dtype=torch.bool)
        units.append(Unit(grouping.label, grouping, _per_channel_macs(graph, root, macs), sizes,
                          _squared_norms(grouping), True, _bypassed(graph, root, nodes), zero))  # fmt: skip
    called = {str(n.target) for n in graph.gm.graph.nodes if n.op == "call_module"}
    for name, module in model.named_modules():
        if name not in called or name in graph.heads_fixed:
            continue
        if not isinstance(module, nn.MultiheadAttention | HeadPrunedAttention):
            continue
        if isinstance(module, nn.MultiheadAttention) and (module.bias_k is not None or module.add_zero_attn):
            continue
        groupings = Heads().build(name, module)
        if not groupings:
            continue
        (grouping,) = groupings
        h = grouping.n_groups
        per_head = torch.full((h,), macs.get(name, 0) / h, dtype=torch.float64)
        sizes = torch.full((h,), float(grouping.shape[1]), dtype=torch.float64)
        # at least one head stays: whether the attention's output is bypassed is not known
        # here (its whole sub-block goes through depth of the surrounding spaces instead)
        norms = _squared_norms(grouping)
        units.append(Unit(name, grouping, per_head, sizes, norms, False, False, norms == 0))
    for head_unit in graph.head_units:
        if head_unit.failed:
            continue  # the capture keeps these heads: zeroing them would remove nothing
        (grouping,) = Heads().build(head_unit.module, model.get_submodule(head_unit.module))
        groups = grouping.n_groups
        if groups < 2:
            continue  # at least one head stays
        # the module's MACs (projections and attention products) split evenly over its groups
        per_group = torch.full((groups,), macs.get(head_unit.module, 0) / groups, dtype=torch.float64)
        sizes = torch.full((groups,), float(grouping.shape[1]), dtype=torch.float64)
        norms = _squared_norms(grouping)
        units.append(Unit(head_unit.module, grouping, per_group, sizes, norms, False, False, norms == 0))
    return units
