"""Channel rules keyed on ATen ops, for graphs captured with ``torch.export``.

The ops a model reduces to are few: convolution, linear / addmm, batch / layer / group
norm, elementwise math, reshapes and permutes, cat / split / slicing, pooling, padding,
interpolation, reductions, attention and embedding. Each rule below maps its inputs'
channel axes to its output's and, for ops that read a module's weight, registers the
slices of that module's parameters (see :mod:`shrinkage.graph.export_graph`).

Ops that mix channels in ways no removal survives (a product of two activations as in
attention, slicing or indexing the channel dim, a reshape that splits the channel dim)
*keep* the channels they read: exact, and the rest of the model still shrinks.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import fx, nn

from shrinkage.compact.layer_types import WeightUse, layer_type_of
from shrinkage.graph import rules as fx_rules
from shrinkage.graph.builder import Combine, GraphBuilder, RuleFn, RuleSet, node_args, node_kwargs
from shrinkage.graph.export_graph import ExportGraphBuilder
from shrinkage.graph.rule_marks import Pads, mark
from shrinkage.graph.spaces import Axis, Segment

aten = torch.ops.aten
Rule = Callable[[ExportGraphBuilder, fx.Node], Axis | None]


class AtenRuleSet(RuleSet):
    """Rules keyed by ATen op packet (``aten.add``: every overload), plus ``operator.getitem``."""

    def rule_for(self, node: fx.Node, module: nn.Module | None) -> RuleFn | None:
        if node.op != "call_function":
            return None
        target = node.target
        if target in self.functions:
            return self.functions[target]
        return self.functions.get(getattr(target, "overloadpacket", None))

    def apply(self, b: GraphBuilder, node: fx.Node) -> Axis | None:
        assert isinstance(b, ExportGraphBuilder)
        fn = self.rule_for(node, None)
        if any((a := b.axis(arg)) is not None and a.grid is not None for arg in node.all_input_nodes):
            if fn is None or not getattr(fn, "handles_grid", False):
                # the split axis is pinned already (see reshape): keep what this op reads
                return b.keep(node, f"{_name(node)} on a channel axis split over two dims")
        if fn is None:
            return b.unknown(node, f"ATen op {_name(node)}")
        return fn(b, node)


def _name(node: fx.Node) -> str:
    packet = getattr(node.target, "overloadpacket", None)
    return f"aten.{packet.__name__}" if packet is not None else str(getattr(node.target, "__name__", node.target))


# -- layers that own parameters --------------------------------------------------------


def conv(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``conv1d/2d/3d(x, weight, bias, ...)`` and ``convolution`` (not transposed)."""
    owner = _owner(b, node.args[1], WeightUse.CONV)
    if owner is None or _is_transposed(node):
        return b.keep(node, "convolution with a computed weight or of an unsupported module")
    if not b.own(node, owner):
        return b.keep(node, f"a second call of '{owner}'")
    axis = b.axis(node.args[0])
    if axis is None or axis.dim != 1:
        return b.keep(node, f"convolution '{owner}' on an input without a channel-first axis")
    return fx_rules.conv(b, node)


def _is_transposed(node: fx.Node) -> bool:
    return getattr(node.target, "overloadpacket", None) is aten.convolution and bool(node.args[6])


def linear(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``linear(x, weight, bias)``: the weight of an ``nn.Linear`` (or a subclass)."""
    owner = _owner(b, node.args[1], WeightUse.LINEAR)
    axis = b.axis(node.args[0])
    if owner is None:
        return b.keep(node, "linear with a computed weight or of an unsupported module")
    if not b.own(node, owner):
        return b.keep(node, f"a second call of '{owner}'")
    x = b.value(node.args[0])
    if axis is None:
        return b.keep(node, f"linear '{owner}' on a tensor without channel axis")
    if axis.dim != x.dim() - 1:
        # mixes a non-channel dim (tokens, as in an MLP-Mixer): channels pass through, and
        # the layer's own neurons are not tracked (kept)
        return axis
    return fx_rules.linear(b, node)


def matmul(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``addmm(bias, x, weight)`` / ``mm(x, weight)`` / ``matmul(x, weight)`` with the
    ``(in, out)`` weight of a layer type that applies it so (GPT-2's ``Conv1D``): a linear
    layer. A product of two activations (attention) keeps the channels it reads."""
    packet = getattr(node.target, "overloadpacket", None)
    x_arg, w_arg, bias = (node.args[1], node.args[2], node.args[0]) if packet is aten.addmm else (*node.args[:2], None)
    p = b.param(w_arg)
    if p is None:
        return b.keep(node, "a product of two activations")
    if _owner(b, w_arg, WeightUse.MATMUL) is None:
        return b.keep(node, "a product with a weight of a module without a MATMUL layer type")
    if not b.own(node, p[0]):
        return b.keep(node, f"a second call of '{p[0]}'")
    axis = b.axis(x_arg)
    x = b.value(x_arg)
    if axis is None or axis.dim != x.dim() - 1:
        return b.keep(node, f"layer '{p[0]}' on an input whose last dim is not its channel axis")
    b.use(node, axis, "weight", 1, consumer=True)  # canonical dims: 0 outputs, 1 inputs
    producers = [("weight", 0)] + ([("bias", 0)] if b.param(bias) is not None else [])
    out = b.value(node)
    return b.new_space(node, out.shape[-1], out.dim() - 1, producers)


def batch_norm(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``batch_norm(x, weight, bias, running_mean, running_var, ...)`` and the
    ``_native_batch_norm_legit*`` forms (a tuple whose item 0 is the output)."""
    owner = next((p[0] for a in node.args[1:5] if (p := b.param(a)) is not None), None)
    axis = b.axis(node.args[0])
    module = b.g.module(owner) if owner is not None else None
    tuple_out = isinstance(b.value(node), (tuple, list))
    if (
        owner is None  # then module is None too
        or not isinstance(module, nn.modules.batchnorm._BatchNorm)
        or layer_type_of(module) is None
    ):
        out = b.keep(node, "batch norm with computed statistics")
        if tuple_out and out is not None:
            b.g.axes[f"{node.name}.0"] = out
        return out
    if not b.own(node, owner):
        out = b.keep(node, f"a second call of '{owner}'")
    elif axis is None or axis.dim != 1:
        out = b.keep(node, f"batch norm '{owner}' on an input without a channel-first axis")
    else:
        out = fx_rules.batchnorm(b, node)
    if tuple_out and out is not None:
        b.g.axes[f"{node.name}.0"] = out
    return out


def prelu(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``prelu(x, weight)``: one slope per channel (dim 1), or one for all."""
    axis = b.axis(node.args[0])
    p = b.param(node.args[1])
    module = b.g.module(p[0]) if p is not None else None
    if p is None or not isinstance(module, nn.PReLU) or layer_type_of(module) is None:
        return b.keep(node, "PReLU with a computed slope")
    if not b.own(node, p[0]):
        return b.keep(node, f"a second call of '{p[0]}'")
    if module.num_parameters == 1:
        return axis
    if axis is None or axis.dim != 1:
        return b.keep(node, f"per-channel PReLU '{p[0]}' on an input without a channel-first axis")
    b.use(node, axis, "weight", 0, consumer=False)
    return axis


def norm_across(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """layer / group / RMS norm: statistics over the channels, so every channel they see stays."""
    axis = b.axis(node.args[0])
    b.pin(axis, f"normalized across channels at '{node.name}'")
    if isinstance(b.value(node), (tuple, list)) and axis is not None:
        b.g.axes[f"{node.name}.0"] = axis
    return axis


def _owner(b: ExportGraphBuilder, weight: Any, use: WeightUse) -> str | None:
    """The module owning ``weight`` when it is that module's ``weight`` and the module's
    layer type applies it this way; else None (the op's channels are then kept)."""
    p = b.param(weight)
    if p is None or p[1] != "weight":
        return None
    layer_type = layer_type_of(b.g.module(p[0]))
    return p[0] if layer_type is not None and layer_type.weight_use is use else None


# -- elementwise -----------------------------------------------------------------------


def passthrough(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """Channel ``c`` of the output is a function of channel ``c`` of the input alone."""
    return b.axis(node.args[0])


def zero_to_zero(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """An elementwise op with ``f(0) == 0`` (ReLU, GELU, SiLU, dropout, a copy)."""
    return b.axis(node.args[0])


def binary(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    return _binary(b, node, node.args[:2], Combine.SUM)


def _binary(b: ExportGraphBuilder, node: fx.Node, args: tuple[Any, ...], combine: Combine | None) -> Axis | None:
    """``add/sub/mul/div``, ``where``-like ops: operands with channel axes are the same
    channels (their spaces merge); an operand without channel axis that is 1 along the
    channel dim (a scalar, a per-sample drop-path scale) leaves channels alone. One that
    varies along it is sliced with the channels when it is a free tensor of the model (a
    layer scale, a position embedding: see :meth:`GraphBuilder.free_tensor`) and the op
    says how it ``combine`` s; anything else (a computed tensor, a ``where``) keeps them."""
    operands = [a for a in args if isinstance(b.value(a), torch.Tensor)]
    with_axis = [a for a in operands if b.axis(a) is not None]
    out = b.value(node)
    if len(with_axis) == 2:
        return _merge(b, node, [b.axis(a) for a in with_axis], [b.value(a).dim() for a in with_axis], out.dim())
    if not with_axis:
        return None
    x = with_axis[0]
    axis = b.axis(x)
    assert axis is not None
    shifted = Axis(axis.dim + out.dim() - b.value(x).dim(), axis.segments)
    for other in operands:
        if other is x:
            continue
        v = b.value(other)
        d = shifted.dim - (out.dim() - v.dim())  # the other operand's dim aligned with the channels
        if d < 0 or v.shape[d] == 1:
            continue
        found = b.free_tensor(other, d, node, axis) if combine is not None else "not sliced by this op"
        if isinstance(found, str) or combine is None:
            why = f" ({found})" if b.param(other) is not None else ""
            b.pin(axis, f"{_name(node)} with a tensor without channel axis at '{node.name}'{why}")
        else:
            b.free_use(node, axis, found, combine, numerator=x is args[0])
    return shifted


def _merge(b: ExportGraphBuilder, node: fx.Node, axes: list[Axis | None], dims: list[int], nd: int) -> Axis | None:
    a, c = axes
    assert a is not None and c is not None
    da, dc = a.dim + nd - dims[0], c.dim + nd - dims[1]
    table = b.g.table
    sizes = [
        (table.get(sa.space).size, table.get(sc.space).size) for sa, sc in zip(a.segments, c.segments, strict=False)
    ]
    if len(a.segments) != len(c.segments) or any(x != y for x, y in sizes):
        return b.keep(node, f"{_name(node)} of pieces of different channel spaces")
    if da != dc or [s.width for s in a.segments] != [s.width for s in c.segments]:
        # e.g. a window attention's relative position bias added to scores: keep both sides
        return b.keep(node, f"{_name(node)} of tensors whose channel axes differ")
    for sa, sc in zip(a.segments, c.segments, strict=True):
        if (sa.start, sa.stop, sa.repeat) != (sc.start, sc.stop, sc.repeat):
            return b.keep(node, f"{_name(node)} of differently sliced channel spaces")
        b.g.table.union(sa.space, sc.space)
    return Axis(da, a.segments)


def product(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``mul``: as :func:`binary`; compaction also knows that a zero factor makes a zero product."""
    return _binary(b, node, node.args[:2], Combine.PRODUCT)


def quotient(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``div``: as :func:`binary` (of two activations, a zero numerator is not assumed to
    give zero: ``0 / 0``; divided by a free tensor of the model's, it is: values are finite)."""
    return _binary(b, node, node.args[:2], Combine.QUOTIENT)


def where(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``where(cond, x, y)``: like an add of ``x`` and ``y``; a channel-dependent ``cond`` keeps them."""
    cond = node.args[0]
    if b.axis(cond) is not None:
        return b.keep(node, "where with a channel-dependent condition")
    return _binary(b, node, tuple(node.args[1:3]), None)


# -- spatial ---------------------------------------------------------------------------


def spatial(k: int) -> Rule:
    """Pooling, interpolation, ``roll`` over the last ``k`` dims: never across channels."""

    def rule(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
        axis = b.axis(node.args[0])
        if axis is None:
            return None
        nd = b.value(node.args[0]).dim()
        if axis.dim >= nd - k:
            return b.keep(node, f"{_name(node)} over the channel dim")
        if isinstance(b.value(node), (tuple, list)):  # (values, indices)
            b.g.axes[f"{node.name}.0"] = axis
        return axis

    return rule


def _pads_at(index: int) -> Pads:
    """Whether the op pads its input: its padding argument at ``index`` is not all zero."""

    def pads(node: fx.Node, module: nn.Module | None) -> bool:
        args = node_args(node)
        padding: str | int | list[int] = args[index] if len(args) > index else 0
        if isinstance(padding, str):
            return padding != "valid"
        return any(int(p) != 0 for p in ((padding,) if isinstance(padding, int) else padding))

    return pads


def pad(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``constant_pad_nd`` / ``pad``: pads the last ``len(pad) // 2`` dims."""
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    widths: list[int] = list(node_args(node)[1])
    nd = b.value(node.args[0]).dim()
    d = nd - 1 - axis.dim  # index of the channel dim's pair in the pad list
    if 2 * d + 1 < len(widths) and (widths[2 * d] != 0 or widths[2 * d + 1] != 0):
        return b.keep(node, "padding of the channel dim")
    return axis


# -- layout ----------------------------------------------------------------------------


def reshape(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``view``/``reshape``: the channel dim keeps its place among the others when the
    dims before it multiply to the same count; a flatten of trailing dims repeats each
    channel; a channel shuffle's split is followed (see the fx rule). A split of the
    channel dim (into attention heads) or a merge with the dims before it keeps the
    channels."""
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    before = tuple(b.value(node.args[0]).shape)
    after = tuple(b.value(node).shape)
    if axis.grid is not None:
        return fx_rules.reshape(b, node)
    d = axis.dim
    lead = _prod(before[:d])
    for e in range(len(after)):
        if _prod(after[:e]) != lead:
            continue
        if after[e] == before[d]:
            return Axis(e, axis.segments)
        trailing = _prod(before[d + 1 :])
        if after[e] == before[d] * trailing and trailing > 1 and _prod(after[e + 1 :]) == 1:
            segs = tuple(Segment(s.space, s.start, s.stop, s.repeat * trailing) for s in axis.segments)
            return Axis(e, segs)
    split = (
        len(after) == len(before) + 1
        and after[:d] == before[:d]
        and after[d + 2 :] == before[d + 1 :]
        and after[d] * after[d + 1] == before[d]
    )
    if split and min(after[d], after[d + 1]) > 1 and all(s.repeat == 1 for s in axis.segments):
        # a channel shuffle's first step, or attention heads: the fx rule tracks the split
        # (and pins the channels, whose order the shuffle fixes); later ops that do not
        # know the split (attention products) keep them
        return fx_rules.reshape(b, node)
    return b.keep(node, f"a reshape from {list(before)} to {list(after)} across the channel dim")


def _prod(xs: Iterable[int]) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def permute(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``permute(x, dims)``, ``transpose(x, d0, d1)``, ``t(x)``: the channel dim moves."""
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    nd = b.value(node.args[0]).dim()
    order = list(range(nd))
    packet = getattr(node.target, "overloadpacket", None)
    if packet is aten.permute:
        order = [int(d) % nd for d in node_args(node)[1]]
    elif packet is aten.t:
        order = order[::-1]
    else:
        d0, d1 = (int(d) % nd for d in node_args(node)[1:3])
        order[d0], order[d1] = order[d1], order[d0]
    if axis.grid is None:
        return Axis(order.index(axis.dim), axis.segments)
    first, second = order.index(axis.dim), order.index(axis.dim + 1)
    if second == first + 1:
        return Axis(first, axis.segments, axis.grid)
    if first == second + 1:  # the two dims swapped: a channel shuffle's transpose
        g = axis.grid
        return Axis(second, axis.segments, type(g)(g.sizes[::-1], g.strides[::-1]))
    return b.keep(node, "a permute that separates the two dims of a split channel axis")


def unsqueeze(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    d = int(node_args(node)[1]) % b.value(node).dim()
    return Axis(axis.dim + (d <= axis.dim), axis.segments)


def squeeze(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    shape = b.value(node.args[0]).shape
    nd = len(shape)
    args = node_args(node)
    given: int | list[int] = args[1] if len(args) > 1 else list(range(nd))
    dims = [int(d) % nd for d in ((given,) if isinstance(given, int) else given)]
    dims = [d for d in dims if shape[d] == 1]
    if axis.dim in dims:
        return b.keep(node, "a squeeze of the channel dim")
    return Axis(axis.dim - sum(d < axis.dim for d in dims), axis.segments)


def expand(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``expand``: new leading dims shift the channel dim; its size does not change."""
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    return Axis(axis.dim + b.value(node).dim() - b.value(node.args[0]).dim(), axis.segments)


def slice_(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``slice(x, dim, start, end, step)`` / ``select(x, dim, index)``: over another dim
    the channels pass (a class token taken from the tokens); over the channel dim the
    literal bounds fix the channel count, so the channels stay."""
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    nd = b.value(node.args[0]).dim()
    args = node_args(node)
    dim = int(args[1]) % nd if len(args) > 1 else 0
    if dim == axis.dim:
        return b.keep(node, "slicing or indexing the channel dim")
    removed = getattr(node.target, "overloadpacket", None) is aten.select and dim < axis.dim
    return Axis(axis.dim - removed, axis.segments)


def split(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``split``/``split_with_sizes``/``chunk``/``unbind``: over the channel dim the
    pieces' sizes are literal in the model's code, so the channels stay (their pieces
    are tracked); over another dim each piece has the input's channels."""
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    nd = b.value(node.args[0]).dim()
    args = node_args(node)
    dim = int(args[2]) % nd if len(args) > 2 else 0
    if getattr(node.target, "overloadpacket", None) is aten.unbind:
        dim = int(args[1]) % nd if len(args) > 1 else 0
        if dim == axis.dim:
            return b.keep(node, "unbinding the channel dim")
        shifted = Axis(axis.dim - (dim < axis.dim), axis.segments)
        for i, _ in enumerate(b.value(node)):
            b.g.axes[f"{node.name}.{i}"] = shifted
        return shifted
    pieces = b.value(node)
    if dim != axis.dim:
        for i, _ in enumerate(pieces):
            b.g.axes[f"{node.name}.{i}"] = axis
        return axis
    b.pin(axis, f"split of the channel dim into pieces of literal sizes at '{node.name}'")
    start = 0
    for i, piece in enumerate(pieces):
        width = piece.shape[dim]
        b.g.axes[f"{node.name}.{i}"] = fx_rules._slice_axis(b, node, axis, start, start + width)
        start += width
    return axis


def getitem(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    source, index = node.args[0], node.args[1]
    if isinstance(source, fx.Node) and isinstance(b.value(source), (tuple, list)):
        return b.g.axes.get(f"{source.name}.{index}")
    return b.keep(node, "indexing a channel tensor")


def cat(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    return fx_rules.cat(b, node)


def reduce(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``mean/sum/amax/amin/var/std`` over dims: over non-channel dims (global pooling)
    the channels pass; over the channel dim (a norm) the channels read stay."""
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    nd = b.value(node.args[0]).dim()
    args, kwargs = node_args(node), node_kwargs(node)
    given: int | list[int] | tuple[int, ...] | None = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if given is None or (isinstance(given, (list, tuple)) and not given):
        return b.keep(node, "a full reduction of a channel tensor")
    dims = {int(d) % nd for d in ((given,) if isinstance(given, int) else given)}
    if axis.dim in dims:
        # a statistic over the channels (RMS norm's mean of squares): removing any channel
        # changes it, so they stay; the result has no channels of its own
        b.pin(axis, f"reduced over the channel dim at '{node.name}'")
        return None
    if isinstance(b.value(node), (tuple, list)):
        out = axis if keepdim else Axis(axis.dim - sum(d < axis.dim for d in dims), axis.segments)
        b.g.axes[f"{node.name}.0"] = out
        return out
    return axis if keepdim else Axis(axis.dim - sum(d < axis.dim for d in dims), axis.segments)


def softmax(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``softmax(x, dim)``: over another dim, channel-wise; over the channel dim it mixes."""
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    nd = b.value(node.args[0]).dim()
    if int(node_args(node)[1]) % nd == axis.dim:
        return b.keep(node, "a softmax over the channel dim")
    return axis


def mixing(why: str) -> Rule:
    """Ops that combine channels of two activations (attention products) or rearrange them."""

    def rule(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
        return b.keep(node, why)

    return rule


def fresh(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    """``new_zeros``/``zeros_like``...: a new tensor whose values do not depend on the input's."""
    return None


def no_value(b: ExportGraphBuilder, node: fx.Node) -> Axis | None:
    return None


_UNARY = (
    "relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_",
    "elu", "elu_", "selu", "celu", "mish", "mish_", "softplus", "dropout", "dropout_", "feature_dropout", "alpha_dropout",
    "clone", "contiguous", "alias", "detach", "_to_copy", "to", "type_as", "neg", "abs", "exp", "log", "sqrt", "rsqrt",
    "erf", "pow", "clamp", "clamp_", "clamp_min", "clamp_max", "sin", "cos", "square", "reciprocal", "sign",
    "masked_fill", "masked_fill_", "fill", "zeros_like", "ones_like", "empty_like", "native_dropout", "lift_fresh_copy",
    "_assert_tensor_metadata", "logit", "threshold",
)  # fmt: skip
_BINARY = ("add", "add_", "sub", "sub_", "rsub", "maximum", "minimum")
# unary ops with f(0) == 0: a channel that is exactly zero stays zero through them
_ZERO_TO_ZERO = (
    "relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "tanh", "tanh_", "hardswish", "hardswish_",
    "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "mish", "mish_",
    "dropout", "dropout_", "feature_dropout", "clone", "contiguous", "alias", "detach", "_to_copy", "to", "neg", "abs",
    "sin", "square", "native_dropout", "lift_fresh_copy",
)  # fmt: skip
_SPATIAL = {
    1: ("max_pool1d", "avg_pool1d", "adaptive_avg_pool1d", "adaptive_max_pool1d", "upsample_nearest1d",
        "upsample_linear1d", "reflection_pad1d", "replication_pad1d"),
    2: ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
        "upsample_nearest2d", "upsample_bilinear2d", "upsample_bicubic2d", "_upsample_bilinear2d_aa",
        "_upsample_nearest_exact2d", "reflection_pad2d", "replication_pad2d", "roll", "_adaptive_avg_pool2d"),
    3: ("max_pool3d", "avg_pool3d", "adaptive_avg_pool3d", "adaptive_max_pool3d", "upsample_nearest3d",
        "upsample_trilinear3d"),
}  # fmt: skip
_MIXING = {
    "bmm": "a product of two activations", "baddbmm": "a product of two activations", "einsum": "an einsum",
    "scaled_dot_product_attention": "attention", "_scaled_dot_product_flash_attention_for_cpu": "attention",
    "pixel_shuffle": "a pixel shuffle", "pixel_unshuffle": "a pixel unshuffle", "index": "indexing a channel tensor",
    "index_select": "indexing a channel tensor", "gather": "gathering from a channel tensor", "stack": "stack",
    "linalg_vector_norm": "a norm over channels", "norm": "a norm over channels", "cumsum": "a cumulative sum",
    "topk": "top-k", "sort": "sort", "argmax": "argmax", "flip": "flip", "diff": "diff",
    "index_put": "index_put", "index_put_": "index_put", "scatter": "scatter", "repeat": "repeat",
    "repeat_interleave": "repeat_interleave", "tril": "tril", "triu": "triu", "unfold": "unfold",
    "col2im": "fold", "im2col": "unfold", "grid_sampler": "grid sample", "_unsafe_index": "indexing",
    "constant_pad_nd_channels": "padding",
}  # fmt: skip


def _with_pads(rule: Rule, index: int) -> Rule:
    mark([rule], pads=_pads_at(index))
    return rule


def _packet(name: str) -> Any:
    return getattr(aten, name, None)


def default_aten_rules() -> AtenRuleSet:
    rules = AtenRuleSet()
    table: dict[Any, Rule] = {}
    for name in _UNARY:
        table[_packet(name)] = passthrough
    for name in _BINARY:
        table[_packet(name)] = binary
    for name in ("mul", "mul_"):
        table[_packet(name)] = product
    for name in ("div", "div_"):
        table[_packet(name)] = quotient
    for name in _ZERO_TO_ZERO:
        table[_packet(name)] = zero_to_zero
    for k, names in _SPATIAL.items():
        for name in names:
            table[_packet(name)] = spatial(k)
    for name, why in _MIXING.items():
        table[_packet(name)] = mixing(why)
    for name in ("conv1d", "conv2d", "conv3d", "convolution", "_convolution"):
        table[_packet(name)] = conv
    table[aten.linear] = linear
    for name in ("addmm", "mm", "matmul"):
        table[_packet(name)] = matmul
    for name in ("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm",
                 "instance_norm"):  # fmt: skip
        table[_packet(name)] = batch_norm if name != "instance_norm" else norm_across
    for name in ("layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "rms_norm", "_fused_rms_norm"):
        table[_packet(name)] = norm_across
    table[aten.embedding] = fx_rules.embedding  # the same rule: a new, kept space of the model width
    table[aten.prelu] = prelu
    table[aten._prelu_kernel] = prelu
    for name in ("view", "reshape", "_unsafe_view", "flatten", "unflatten"):
        table[_packet(name)] = reshape
    for name in ("permute", "transpose", "t", "swapaxes", "movedim"):
        table[_packet(name)] = permute if name != "movedim" else mixing("movedim")
    table[aten.unsqueeze] = unsqueeze
    table[aten.squeeze] = squeeze
    table[aten.expand] = expand
    table[aten.expand_as] = expand
    table[aten.reshape_as] = reshape
    table[aten.view_as] = reshape
    for name in ("new_zeros", "new_ones", "new_empty", "new_full", "zeros_like", "ones_like", "empty_like",
                 "full_like", "rand_like", "randn_like"):  # fmt: skip
        table[_packet(name)] = fresh
    for name in ("slice", "select", "narrow"):
        table[_packet(name)] = slice_
    for name in ("split", "split_with_sizes", "chunk", "unbind", "tensor_split"):
        table[_packet(name)] = split
    table[aten.cat] = cat
    table[aten.where] = where
    table[aten.constant_pad_nd] = pad
    table[aten.pad] = pad
    for name in ("mean", "sum", "amax", "amin", "var", "std", "max", "min", "prod", "var_mean", "logsumexp"):
        table[_packet(name)] = reduce
    for name in ("softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax"):
        table[_packet(name)] = softmax
    for name in ("sym_size", "_assert_scalar", "sym_numel", "sym_stride", "scalar_tensor"):
        table[_packet(name)] = no_value
    table[operator.getitem] = getitem
    for packet, k in ((aten.avg_pool1d, 1), (aten.avg_pool2d, 2), (aten.avg_pool3d, 3)):
        table[packet] = _with_pads(spatial(k), 3)  # avg_pool(x, kernel, stride, padding, ...)
    table.pop(None, None)
    # the rules read the ATen builder's owners and parameters: AtenRuleSet.apply hands them one
    rules.functions.update(cast(dict[Any, RuleFn], table))
    mark((reshape, permute, passthrough, zero_to_zero), handles_grid=True)
    mark([product], product=True)
    # ops that pad: a non-zero constant channel leaves them as a border pattern
    # conv1d/2d/3d and convolution: padding is argument 4
    mark([conv], pads=_pads_at(4))
    mark([pad], pads=lambda node, module: True)
    # a depthwise conv, the only conv that is not a producer: zero in, zero bias, zero out
    mark([conv], zero_bias_keeps_zero=True)
    mark([binary], adds_zero=True)
    zero_preserving = [zero_to_zero, reshape, permute, unsqueeze, squeeze, expand, slice_, split, getitem, cat,
                       reduce] + [rules.functions[_packet(n)] for names in _SPATIAL.values() for n in names
                                  if _packet(n) in rules.functions]  # fmt: skip
    mark(zero_preserving, keeps_zero=True)
    # ops that compute correctly on a tensor with no channels (a removed branch)
    mark((passthrough, zero_to_zero, binary, product, quotient, conv, linear, batch_norm, getitem), zero_width=True)
    return rules
