"""In-place ops of an exported graph rewritten out of place, where no alias can see them.

``torch.export`` keeps ``out += identity`` as ``aten.add_`` (and ``ReLU(inplace=True)``
as ``aten.relu_``). The channel rules need each node to be one value, and
``ExportedProgram.run_decompositions`` functionalizes a program by tracing it again,
which costs more than the export itself (2.4x the export's time on torchvision's
resnet50, profiled). Most mutations need none of that: when the mutated tensor is an
intermediate result that no other name reads after the write, ``x.add_(y)`` is
``x' = x + y`` with every later reader of ``x`` reading ``x'``.
:func:`rewrite_out_of_place` does exactly that and reports any mutation it cannot prove
safe, so that the caller functionalizes the general way.
"""

from __future__ import annotations

import operator

import torch
from torch import fx


def is_mutating(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return node.op == "call_function" and schema is not None and schema.is_mutable


#: a node whose aliasing is not known from an ATen schema
_OPAQUE = object()


def _parent(node: fx.Node) -> fx.Node | None | object:
    """The value whose storage ``node``'s output shares (a view's or an in-place op's first
    argument, a split piece's split), None when its output is new storage, ``_OPAQUE``
    when that cannot be told (not an ATen op)."""
    if node.op != "call_function":
        return None
    if node.target is operator.getitem:
        source = node.args[0]
        return source if isinstance(source, fx.Node) else _OPAQUE
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return _OPAQUE
    if not any(r.alias_info is not None for r in schema.returns):
        return None
    first = node.args[0] if node.args else None
    return first if isinstance(first, fx.Node) else _OPAQUE


def _safe_to_rewrite(node: fx.Node, target: fx.Node, order: dict[fx.Node, int]) -> bool:
    """No value but ``target`` (and what is derived from it after ``node``) can see the
    write ``node`` makes to ``target``'s storage."""
    parents = {n: _parent(n) for n in order}
    if any(p is _OPAQUE for p in parents.values()):
        return False

    def root(n: fx.Node) -> fx.Node:
        while isinstance(parents[n], fx.Node):
            n = parents[n]  # type: ignore[assignment]
        return n

    base = root(target)
    if base.op != "call_function":
        return False  # an input, parameter or buffer: the caller shares it
    at = order[node]
    rebound = {target, node}  # after the write, these name the written value
    for n in order:  # graph order: parents come before their views
        if n is node or n is target or root(n) is not base:
            continue
        if order[n] > at and parents[n] in rebound:
            rebound.add(n)  # a view taken after the write, of the written value: it reads the new one
        elif order[n] > at or any(order[u] > at for u in n.users):
            return False  # another name for the storage, read after the write
    return True


def _out_of_place_op(node: fx.Node) -> object | None:
    """``aten.add.Tensor`` for ``aten.add_.Tensor``, when ``node`` writes its first
    argument only and returns it; else None."""
    schema = node.target._schema  # type: ignore[union-attr]
    written = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    if len(written) != 1 or written[0] is not schema.arguments[0] or len(schema.returns) != 1:
        return None
    name, overload = schema.name.split("::")[-1], schema.overload_name or "default"
    if not name.endswith("_") or name.endswith("__"):
        return None
    packet = getattr(torch.ops.aten, name[:-1], None)
    op = getattr(packet, overload, None) if packet is not None else None
    out_schema = getattr(op, "_schema", None)
    if out_schema is None or out_schema.is_mutable or len(out_schema.arguments) != len(schema.arguments):
        return None
    return op


def rewrite_out_of_place(gm: fx.GraphModule) -> bool:
    """Rewrite every in-place op of ``gm`` out of place; True when all were rewritten.

    An op qualifies when the storage it writes was allocated inside the graph (not an
    input, parameter or buffer) and no other name for that storage (a view, the base of a
    view, a split piece) is read after the write: then pointing the readers of the
    written tensor after the op at its result is exact. On False the graph may be partly
    rewritten: functionalize the general way.
    """
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        if not is_mutating(node):
            continue
        op = _out_of_place_op(node)
        target = node.args[0] if node.args else None
        if op is None or not isinstance(target, fx.Node) or not _safe_to_rewrite(node, target, order):
            return False
        node.target = op
        for user in list(target.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(target, node)
    gm.graph.lint()
    gm.recompile()
    return True
