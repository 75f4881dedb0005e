"""Which heads of hand-written attention modules go (see :mod:`shrinkage.graph.attention_heads`).

A key/value head goes, with the query heads that share it, when

* its value rows and biases are zero: every query head attending to it then averages
  zero vectors and outputs zero, whatever its queries and keys, or
* none of the merged channels of those query heads is read (the output projection's
  columns, or every consumer's, are zero).

Then its query, key and value rows, its merged channels and its entries of the unit's
per-head tensors are removed everywhere, and the module's head counts are updated when
the plan is applied. At least one head stays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from shrinkage.compact.layer_types import canonical_param
from shrinkage.graph.attention_heads import HeadUnit
from shrinkage.graph.builder import ChannelGraph
from shrinkage.graph.spaces import Space, Use
from shrinkage.nonzero import used_along

ZeroChannels = Callable[[ChannelGraph, Use, int, int], Tensor]


@dataclass
class HeadDecision:
    """The heads of one attention unit that stay."""

    key_value: Tensor  # bool per key/value head
    channels: dict[int, Tensor]  # space root -> kept channels
    #: (owner module, attribute) -> (dim, kept entries): the unit's per-head tensors
    per_head: dict[tuple[str, str], tuple[int, Tensor]]


def decide_heads(cg: ChannelGraph, unit: HeadUnit, zero_channels: ZeroChannels) -> HeadDecision | None:
    """The heads that stay, or None when nothing goes (or the unit failed, or a space of
    it was merged with channels that are not its own). ``zero_channels(cg, use, root, n)``:
    which channels a consumer's slice leaves unread."""
    if unit.failed or "merged" not in unit.spaces:
        return None
    table = cg.table
    merged_root = table.find(unit.spaces["merged"])
    merged = table.get(merged_root)
    roles = {role: table.find(sid) for role, sid in unit.spaces.items() if role != "merged"}
    if not _own(merged, producers=False) or any(not _own(table.get(r), producers=True) for r in roles.values()):
        return None
    c = unit.counts
    d = c.head_dim
    fused = "qkv" in roles
    value_root = roles["qkv" if fused else "value"]
    offset = (c.query + c.key_value) * d if fused else 0
    zero_value = torch.ones(c.key_value * d, dtype=torch.bool)
    for s in table.get(value_root).producers:
        rows = canonical_param(cg.module(s.module), s.attr).movedim(s.dim, 0)[offset : offset + c.key_value * d]
        zero_value &= ~used_along(rows, 0)
    unread = torch.ones(unit.merged_width, dtype=torch.bool)
    for use in merged.consumers:
        unread &= zero_channels(cg, use, merged_root, unit.merged_width)
    remove = zero_value.reshape(c.key_value, d).all(dim=1) | unread.reshape(c.key_value, c.group * d).all(dim=1)
    if remove.all():
        remove[0] = False  # a module with no heads cannot infer its head count
    if not remove.any():
        return None
    keep_kv = ~remove
    keep_query = keep_kv.repeat_interleave(c.group * d)
    keep_kv_rows = keep_kv.repeat_interleave(d)
    keep: dict[int, Tensor] = {merged_root: keep_query}
    if fused:
        keep[roles["qkv"]] = torch.cat([keep_query, keep_kv_rows, keep_kv_rows])
    else:
        keep[roles["query"]] = keep_query
        keep[roles["key"]] = keep_kv_rows
        keep[roles["value"]] = keep_kv_rows
    keep_heads = keep_kv.repeat_interleave(c.group)
    return HeadDecision(keep_kv, keep, {key: (dim, keep_heads) for key, dim in unit.per_head.items()})


def _own(space: Space, producers: bool) -> bool:
    """A unit's space as the graph made it: not pinned, no channels of another space merged in."""
    if space.pinned or space.passthrough or space.is_input:
        return False
    return bool(space.producers) if producers else not space.producers
