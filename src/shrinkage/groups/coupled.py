"""Coupled groups: every slice that must vanish together for one channel to be removable.

For channel ``c`` of a channel space (see :mod:`shrinkage.graph`) the group holds the
producers' rows ``c`` (conv filters, linear neurons, their biases), the per-channel
parameters that pass it on (BatchNorm scale and shift) and every consumer's input
slice for ``c`` (the next conv's input channel, the ``H*W`` columns of a Linear behind a
flatten, every branch tied to it by a residual add). A group Lasso on these groups
drives the whole removable structure to zero at once, so compaction removes exactly
what the penalty zeroed.

Shifts (producer biases, BatchNorm's beta) are left out of the regularizer's groups
(``CoupledChannels.include_shifts``): with every consumer's slice at zero nobody reads
the constant a channel still emits, so they need not vanish, and a shift the loss still
uses would keep the group's norm above the prox's threshold (its weights decaying
towards zero without reaching it, the channel removable yet counted as alive).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from shrinkage.compact.layer_types import stored_dim
from shrinkage.errors import ConfigError
from shrinkage.graph.builder import ChannelGraph, channel_positions, qualified_name
from shrinkage.graph.capture import capture_channel_graph
from shrinkage.groups.base import Grouping, SliceGrouping
from shrinkage.groups.kinds import GroupKind, is_shift

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoupledChannels(GroupKind):
    """One group per channel of each space produced by a selected module.

    ``input_shape`` is the shape of one example input (batch included), used to trace
    the model; its values do not matter. For token models give ``vocab``: the example is
    then integer ids below it.
    """

    input_shape: tuple[int, ...]
    vocab: int | None = None
    include_shifts: bool = False

    def build(self, name: str, module: nn.Module) -> list[Grouping]:
        raise ConfigError("coupled groups are built for a whole model: use build_for(model, chosen)")

    def build_for(self, model: nn.Module, chosen: Sequence[tuple[str, nn.Module]]) -> list[Grouping]:
        selected = {name for name, _ in chosen}
        gen = torch.Generator().manual_seed(0)
        if self.vocab is None:
            example = torch.randn(self.input_shape, generator=gen)
        else:
            example = torch.randint(0, self.vocab, self.input_shape, generator=gen)
        # traced on a CPU copy: the graph only supplies names and positions, and its rules
        # build CPU index tensors (SliceGrouping moves them to each parameter's device)
        # the same capture as compact() (torch.export, torch.fx as fallback), so the groups
        # are exactly the channels compaction will be able to remove
        graph = capture_channel_graph(copy.deepcopy(model).cpu(), (example,))
        params = dict(model.named_parameters())
        groupings: list[Grouping] = []
        for root in graph.table.roots():
            space = graph.table.get(root)
            if space.pinned or space.is_input or not selected.intersection(s.module for s in space.producers):
                continue
            if space.heads is not None:
                continue  # channels that go by whole attention heads, not one by one
            groupings.append(space_grouping(graph, params, root, shifts=self.include_shifts))
        return groupings


def space_grouping(
    graph: ChannelGraph, params: dict[str, nn.Parameter], root: int, *, shifts: bool = True
) -> SliceGrouping:
    """One group per channel of space ``root``: its producers' rows, the per-channel
    parameters passing it on and every consumer's slice for it (what must vanish together);
    ``shifts=False`` leaves out the biases and BatchNorm shifts (see the module docstring)."""
    space = graph.table.get(root)
    producers = sorted({s.module for s in space.producers})
    members = []
    for s in space.producers:
        if not shifts and is_shift(s.attr):
            continue
        param = params.get(qualified_name(s.module, s.attr))
        if param is not None:
            dim = stored_dim(graph.module(s.module), s.attr, s.dim)
            members.append((param, dim, torch.arange(space.size).unsqueeze(1)))
    for use in space.passthrough + space.consumers:
        if not shifts and is_shift(use.slice.attr):
            continue
        param = params.get(qualified_name(use.slice.module, use.slice.attr))
        if param is None:
            continue  # running statistics are buffers, not trained
        index = _positions_by_channel(channel_positions(graph, use, root), space.size)
        if index is None:
            log.warning(
                "coupled group of %s skips %s: it reads only part of the channels", "+".join(producers), use.module
            )
            continue
        members.append((param, stored_dim(graph.module(use.slice.module), use.slice.attr, use.slice.dim), index))
    return SliceGrouping("+".join(producers), tuple(members))


def _positions_by_channel(found: list[tuple[torch.Tensor, torch.Tensor]], size: int) -> torch.Tensor | None:
    """``(size, k)`` positions of each channel along a use's dim, from its segments (a
    channel may sit in several: a permuted or repeated axis); ``None`` unless every
    channel sits in the same number of positions."""
    per_channel: list[list[torch.Tensor]] = [[] for _ in range(size)]
    for channels, positions in found:
        for c, pos in zip(channels.tolist(), positions, strict=True):
            per_channel[c].append(pos)
    widths = {sum(p.numel() for p in ps) for ps in per_channel}
    if len(widths) != 1 or 0 in widths:
        return None
    return torch.stack([torch.cat(ps) for ps in per_channel])
