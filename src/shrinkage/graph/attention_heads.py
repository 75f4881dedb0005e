"""Attention heads in an exported graph: the ops between a registered attention module's
projections, treated as one unit whose channels go by whole heads.

Between its query/key/value projections and its output projection an attention module
reshapes into heads, multiplies activations, takes a softmax over tokens and merges the
heads back: no channel rule can follow that (each op would keep the channels it reads).
For a module whose type is registered (:mod:`shrinkage.compact.attention_types`) the
walk instead

* lets the projections make their output spaces as any linear layer does, and marks
  them as going by heads (``Space.heads``),
* skips the ops in between (the *inside* of the unit), and
* gives the merged heads (the output projection's input, or the tensor that leaves the
  module) a new space of ``query heads x head size`` channels, also going by heads.

Compaction then removes a head (with the query heads sharing its key/value head) when its
value rows are zero or nobody reads its merged channels (:mod:`shrinkage.compact.head_plan`).

A tensor the type declares per head (Swin's relative position bias table, one column
per head) is sliced with the heads, and what the module computes from it before adding
it to the attention scores is part of the inside. A module whose graph does not have
that shape is left to the ordinary rules, which keep its channels: a projection applied
twice, a value inside the unit read from outside it, a tensor of the inside leaving the
module other than the merged heads, or another tensor the inside reads that is sized
by the heads (a per-head bias the type does not declare, even one viewed and broadcast
before it meets the scores; a norm over the merged heads). The checks that need
channel axes run during the walk (:meth:`HeadUnit.check`) and pin the unit's spaces
when one fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from shrinkage.compact.attention_types import AttentionType, HeadCounts, attention_type_of
from shrinkage.graph.spaces import Axis

if TYPE_CHECKING:
    from shrinkage.graph.export_graph import ExportGraphBuilder


@dataclass
class HeadUnit:
    """One attention module in the graph: its projection ops, inside, and spaces."""

    module: str
    attention_type: AttentionType
    counts: HeadCounts
    projections: dict[str, fx.Node]  # role -> the op applying that projection
    output_op: fx.Node | None  # the output projection's op (None: the merged heads leave)
    exit: fx.Node | None  # without output projection: the node holding the merged heads
    inside: set[str]  # names of the nodes between projections and merged heads
    #: (owner module, attribute) -> dim: tensors with one entry per query head along dim
    #: (the type's ``per_head``), sliced with the heads; what they compute is inside
    per_head: dict[tuple[str, str], int] = field(default_factory=dict)
    spaces: dict[str, int] = field(default_factory=dict)  # role or "merged" -> space id
    failed: list[str] = field(default_factory=list)

    @property
    def merged_width(self) -> int:
        return self.counts.query * self.counts.head_dim

    def fail(self, b: ExportGraphBuilder, why: str) -> None:
        """Keep every head: pin the unit's spaces made so far (and, via :meth:`merged`, later)."""
        self.failed.append(why)
        for sid in self.spaces.values():
            b.g.table.get(sid).pinned.append(f"attention '{self.module}': {why}")

    def after_projection(self, b: ExportGraphBuilder, node: fx.Node, role: str) -> None:
        """Record the space a projection made; a projection the rules could not track fails the unit."""
        axis = b.g.axes.get(node.name)
        value = b.value(node)
        if axis is None or len(axis.segments) != 1 or axis.dim != value.dim() - 1:
            self.fail(b, f"projection '{role}' has no channel axis of its own")
            return
        sid = axis.segments[0].space
        self.spaces[role] = sid
        space = b.g.table.get(sid)
        space.heads = self.module
        if space.pinned and not self.failed:
            self.fail(b, f"projection '{role}' is pinned")

    def check(self, b: ExportGraphBuilder, node: fx.Node) -> None:
        """An inside op may read the inside, the projections and tensors without channels."""
        for arg in node.all_input_nodes:
            if arg.name in self.inside or any(arg is p for p in self.projections.values()):
                continue
            axis = b.axis(arg)
            if axis is not None:
                b.pin(axis, f"read inside attention '{self.module}' ({node.name})")
                if not self.failed:
                    self.fail(b, f"'{node.name}' reads a channel tensor from outside the attention")

    def merged(self, b: ExportGraphBuilder, node: fx.Node) -> Axis:
        """The axis of the merged heads held by ``node`` (last dim), in a new space."""
        value = b.value(node)
        axis = b.new_space(node, self.merged_width, value.dim() - 1)
        sid = axis.segments[0].space
        self.spaces["merged"] = sid
        b.g.table.get(sid).heads = self.module
        if self.failed:
            b.g.table.get(sid).pinned.append(f"attention '{self.module}': {self.failed[0]}")
        return axis


def find_head_units(b: ExportGraphBuilder) -> Iterator[HeadUnit]:
    """The registered attention modules of the graph whose ops have the unit's shape."""
    root = b.g.root
    assert root is not None
    readers = _weight_readers(b)
    scopes = {node.name: _scope(node) for node in b.g.gm.graph.nodes}
    for name, module in root.named_modules():
        at = attention_type_of(module)
        if at is None or not name:
            continue
        unit = _unit(b, name, module, at, readers, scopes)
        if unit is not None:
            yield unit


def _unit(
    b: ExportGraphBuilder,
    name: str,
    module: nn.Module,
    at: AttentionType,
    readers: dict[str, list[fx.Node]],
    scopes: dict[str, set[str]],
) -> HeadUnit | None:
    projections: dict[str, fx.Node] = {}
    for role, child in at.projections().items():
        found = readers.get(f"{name}.{child}", [])
        if len(found) != 1:
            return None  # not called, or called more than once: the ordinary rules decide
        projections[role] = found[0]
    output_op = None
    if at.output is not None:
        found = readers.get(f"{name}.{at.output}", [])
        if len(found) != 1:
            return None
        output_op = found[0]
    counts = at.counts(module)
    inside: set[str] = set()
    leaving: list[fx.Node] = []
    frontier = list(projections.values())
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user is output_op or user.name in inside:
                continue
            if name in scopes[user.name]:
                inside.add(user.name)
                frontier.append(user)
            elif node not in leaving:
                leaving.append(node)
    nodes = {n.name: n for n in b.g.gm.graph.nodes}
    width = counts.query * counts.head_dim
    exit_node = None
    if output_op is not None:
        source = _activation(output_op)
        if leaving or source is None or source.name not in inside or not _last_dim_is(b, source, width):
            return None
    else:
        if len(leaving) != 1 or leaving[0].name not in inside or not _last_dim_is(b, leaving[0], width):
            return None
        exit_node = leaving[0]
    per_head = _per_head_tensors(b, name, module, at, counts, inside, scopes)
    if per_head is None:
        return None
    exempt = set(per_head) | {_owner_attr(f"{name}.{path}") for path in at.not_per_head}
    stop = inside | {p.name for p in projections.values()}
    read = _tensors_read(b, name, [nodes[n] for n in inside], stop, scopes)
    if any(key not in exempt and _sized_by_heads(b, key, counts) for key in read):
        return None
    return HeadUnit(name, at, counts, projections, output_op, exit_node, inside, per_head)


def _owner_attr(full: str) -> tuple[str, str]:
    owner, _, attr = full.rpartition(".")
    return owner, attr


def _per_head_tensors(
    b: ExportGraphBuilder, name: str, module: nn.Module, at: AttentionType, counts: HeadCounts,
    inside: set[str], scopes: dict[str, set[str]],
) -> dict[tuple[str, str], int] | None:  # fmt: skip
    """The type's per-head tensors, with what the module computes from them before it
    meets the attention (a relative position bias) added to ``inside``; None when one is
    not sized by the query heads or what is computed from it is read outside the module."""
    found: dict[tuple[str, str], int] = {}
    for path, dim in at.per_head:
        owner, attr = _owner_attr(path)
        tensor = getattr(module.get_submodule(owner), attr, None)
        if not isinstance(tensor, torch.Tensor) or tensor.dim() <= dim or tensor.shape[dim] != counts.query:
            return None
        key = _owner_attr(f"{name}.{path}")
        found[key] = dim
        frontier = [user for node in b.g.gm.graph.nodes if b.param(node) == key for user in node.users]
        while frontier:
            node = frontier.pop()
            if node.name in inside:
                continue
            if name not in scopes[node.name]:
                return None  # the per-head values are read outside the module
            inside.add(node.name)
            frontier.extend(node.users)
    return found


def _weight_readers(b: ExportGraphBuilder) -> dict[str, list[fx.Node]]:
    """Module name -> the ops that read its ``weight``."""
    out: dict[str, list[fx.Node]] = {}
    for node in b.g.gm.graph.nodes:
        if node.op != "call_function":
            continue
        for arg in node.args:
            p = b.param(arg)
            if p is not None and p[1] == "weight":
                out.setdefault(p[0], []).append(node)
    return out


def _scope(node: fx.Node) -> set[str]:
    """The names of every module ``node`` runs inside of."""
    from shrinkage.graph.export_graph import _fqn

    stack = node.meta.get("nn_module_stack") or {}
    return {_fqn(path) for path, _ in stack.values()}


def _activation(op: fx.Node) -> fx.Node | None:
    from shrinkage.graph.export_graph import layer_input

    x = layer_input(op)
    return x if isinstance(x, fx.Node) else None


def _last_dim_is(b: ExportGraphBuilder, node: fx.Node, width: int) -> bool:
    value = b.value(node)
    return isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[-1] == width


def _tensors_read(
    b: ExportGraphBuilder, name: str, inside_nodes: list[fx.Node], stop: set[str], scopes: dict[str, set[str]]
) -> set[tuple[str, str]]:
    """The parameters and buffers the inside reads: any it reads directly, and those of
    module ``name`` (or its children) it reads through ops of the module computed from
    them (a bias viewed and broadcast before it is added to the scores). The walk stops
    at ``stop`` (the inside and the projections)."""
    found: set[tuple[str, str]] = set()
    seen: set[str] = set()
    stack = [(a, True) for n in inside_nodes for a in n.all_input_nodes if a.name not in stop]
    while stack:
        node, direct = stack.pop()
        if node.name in seen or node.name in stop:
            continue
        seen.add(node.name)
        key = b.param(node)
        if key is not None:
            if direct or key[0] == name or key[0].startswith(f"{name}."):
                found.add(key)
        elif node.op == "call_function" and name in scopes.get(node.name, set()):
            stack.extend((a, False) for a in node.all_input_nodes)
    return found


def _sized_by_heads(b: ExportGraphBuilder, key: tuple[str, str], counts: HeadCounts) -> bool:
    """Whether tensor ``key`` has a dim the size of the heads (one entry per head, per
    query or value channel): removing heads would have to slice it."""
    sizes = {counts.query, counts.key_value, counts.query * counts.head_dim, counts.key_value * counts.head_dim}
    value: Any = getattr(b.g.module(key[0]), key[1], None)
    return isinstance(value, torch.Tensor) and any(s in sizes for s in value.shape)
