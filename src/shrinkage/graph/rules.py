"""Per-operation channel rules: how each op maps its inputs' channel axes to its output's.

A rule receives the builder and the fx node, registers the parameter slices the op
owns (producer rows, pass-through entries, consumer columns) and returns the axis of
its output. Ops that do not mix channels pass the axis through unchanged.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import fx, nn

from shrinkage.graph.builder import Combine, GraphBuilder, RuleSet, node_args, node_kwargs
from shrinkage.graph.rule_marks import mark
from shrinkage.graph.spaces import Axis, Grid, Segment, Slice
from shrinkage.layers import HeadPrunedAttention

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity,
)  # fmt: skip
#: pooling modules by the number of trailing dims they pool over
_SPATIAL_MODULES: dict[type[nn.Module], int] = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
}  # fmt: skip
_ELEMENTWISE_FUNCTIONS = (
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.dropout, F.softplus,
)  # fmt: skip
_SPATIAL_FUNCTIONS: dict[object, int] = {
    F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
    F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3, F.adaptive_max_pool2d: 2,
}  # fmt: skip
_ELEMENTWISE_METHODS = ("relu", "sigmoid", "tanh", "detach", "relu_", "sigmoid_")


def passthrough(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """Channel ``c`` of the output depends only on channel ``c`` of the input."""
    return b.axis(node.args[0])


def prelu(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """PReLU with one slope per channel passes channel ``c`` on, scaled by slope ``c``."""
    axis = b.axis(node.args[0])
    if axis is not None and _hyper(b.module(node), "num_parameters") > 1:
        if axis.dim != 1:
            return b.unknown(node, f"per-channel PReLU '{node.target}' on an input without a channel-first axis")
        b.use(node, axis, "weight", 0, consumer=False)
    return axis


def spatial(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """Pooling acts on the trailing 1, 2 or 3 dims. Below them the channels pass through;
    a pool over the channel dim itself (a 1-d pool of (N, F) features, which PyTorch
    reads as one unbatched (C, L) signal) mixes neighbouring channels: they all stay."""
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    pooled = _SPATIAL_MODULES[_pool_type(b, node)] if node.op == "call_module" else _SPATIAL_FUNCTIONS[node.target]
    if axis.dim >= b.value(node.args[0]).dim() - pooled:
        return keep_channels(b, node, f"pooled across channels at '{node.name}'")
    return axis


def _hyper(m: nn.Module, name: str) -> int:
    """An int hyperparameter of the module a rule is for (``out_channels``, ``start_dim``):
    ``nn.Module.__getattr__`` types every attribute it does not define as a tensor or module."""
    value: int = getattr(m, name)
    return value


def _pool_type(b: GraphBuilder, node: fx.Node) -> type[nn.Module]:
    return next(c for c in type(b.module(node)).__mro__ if c in _SPATIAL_MODULES)


def keep_channels(b: GraphBuilder, node: fx.Node, why: str) -> Axis | None:
    """An op that mixes channels: every channel it reads stays, and its output's channels
    (at the same dim) form a new space that stays too. Exact by construction."""
    axis = b.axis(node.args[0])
    for arg in b.tensor_inputs(node):
        b.pin(b.axis(arg), why)
    out = b.value(node)
    if axis is None or not isinstance(out, torch.Tensor) or axis.dim >= out.dim():
        return None
    kept = b.new_space(node, out.shape[axis.dim], axis.dim)
    b.pin(kept, why)
    return kept


def _pin_awkward_reads(b: GraphBuilder, node: fx.Node, axis: Axis, *, flattened_ok: bool) -> None:
    """A consumer folds a dead channel's constant once per channel. A channel it reads at
    several places (``cat([bn(y), y])``: two different constants), or, for a conv, a
    channel flattened into several input channels, has no single constant: it stays."""
    roots = [b.g.table.find(seg.space) for seg in axis.segments]
    for seg, root in zip(axis.segments, roots, strict=True):
        if roots.count(root) > 1 or (seg.repeat != 1 and not flattened_ok):
            b.pin(Axis(axis.dim, (seg,)), f"read at several input positions of '{node.target}'")


def conv(b: GraphBuilder, node: fx.Node) -> Axis | None:
    m = b.module(node)
    axis = b.axis(node.args[0])
    producers = [("weight", 0)] + ([("bias", 0)] if m.bias is not None else [])
    if axis is None or axis.dim != 1:
        return b.unknown(node, f"convolution '{node.target}' on an input without a channel-first axis")
    if m.groups == 1:
        b.use(node, axis, "weight", 1, consumer=True)
        _pin_awkward_reads(b, node, axis, flattened_ok=False)
        return b.new_space(node, _hyper(m, "out_channels"), 1, producers)
    if m.groups == m.in_channels == m.out_channels:
        # depthwise: filter c reads only channel c, so it passes channel c on (scaled by
        # its own kernel); a zero kernel leaves the constant bias behind
        b.use(node, axis, "weight", 0, consumer=False, zero_kills=True)
        if m.bias is not None:
            b.use(node, axis, "bias", 0, consumer=False)
        return axis
    b.pin(axis, f"input of grouped conv '{node.target}' (groups={m.groups})")
    out = b.new_space(node, _hyper(m, "out_channels"), 1, producers)
    b.pin(out, f"output of grouped conv '{node.target}' (groups={m.groups})")
    return out


def linear(b: GraphBuilder, node: fx.Node) -> Axis | None:
    m = b.module(node)
    x = b.value(node.args[0])
    axis = b.axis(node.args[0])
    if axis is None or axis.dim != x.dim() - 1:
        return b.unknown(node, f"linear '{node.target}' on an input whose last dim is not its channel axis")
    b.use(node, axis, "weight", 1, consumer=True)
    _pin_awkward_reads(b, node, axis, flattened_ok=True)
    producers = [("weight", 0)] + ([("bias", 0)] if m.bias is not None else [])
    return b.new_space(node, _hyper(m, "out_features"), x.dim() - 1, producers)


def batchnorm(b: GraphBuilder, node: fx.Node) -> Axis | None:
    m = b.module(node)
    axis = b.axis(node.args[0])
    if axis is None or axis.dim != 1:
        return b.unknown(node, f"batch norm '{node.target}' on an input without a channel-first axis")
    if m.affine:
        b.use(node, axis, "weight", 0, consumer=False, zero_kills=True)
        b.use(node, axis, "bias", 0, consumer=False)
    if m.track_running_stats:
        b.use(node, axis, "running_mean", 0, consumer=False)
        b.use(node, axis, "running_var", 0, consumer=False)
    return axis


def _flatten_axis(b: GraphBuilder, node: fx.Node, start: int, end: int) -> Axis | None:
    axis = b.axis(node.args[0])
    shape = b.value(node.args[0]).shape
    if axis is None:
        return None
    nd = len(shape)
    start, end = start % nd, end % nd
    if axis.dim < start:
        return axis
    if axis.dim > end:
        return Axis(axis.dim - (end - start), axis.segments)
    if any(shape[d] != 1 for d in range(start, axis.dim)):
        return b.unknown(node, "a flatten that merges dims before the channel dim")
    inner = 1
    for d in range(axis.dim + 1, end + 1):
        inner *= shape[d]
    segs = tuple(Segment(s.space, s.start, s.stop, s.repeat * inner) for s in axis.segments)
    return Axis(start, segs)


def flatten_module(b: GraphBuilder, node: fx.Node) -> Axis | None:
    m = b.module(node)
    return _flatten_axis(b, node, _hyper(m, "start_dim"), _hyper(m, "end_dim"))


def flatten_call(b: GraphBuilder, node: fx.Node) -> Axis | None:
    args, kwargs = node_args(node), node_kwargs(node)
    start: int = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end: int = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    return _flatten_axis(b, node, start, end)


def reshape(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """``view``/``reshape``: supported when it is a flatten of trailing dims, or keeps the axis."""
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    before = tuple(b.value(node.args[0]).shape)
    after = tuple(b.value(node).shape)
    d = axis.dim
    if axis.grid is not None:
        if (
            before[d : d + 2] == axis.grid.sizes
            and after == before[:d] + (before[d] * before[d + 1],) + before[d + 2 :]
        ):
            return _merge_grid(axis, axis.grid)
        return b.unknown(node, f"a reshape from {list(before)} to {list(after)} of a channel axis split over two dims")
    splits = len(after) == len(before) + 1 and after[:d] == before[:d] and after[d + 2 :] == before[d + 1 :]
    if splits and after[d] * after[d + 1] == before[d] and min(after[d], after[d + 1]) > 1:
        if any(seg.repeat != 1 for seg in axis.segments):
            return b.unknown(node, "a split of a flattened channel axis over two dims")
        # A shuffle of C' < C channels is a different permutation, not the old one restricted
        # to the kept channels, so the channels it permutes are kept; the layers around it
        # (a ShuffleNet branch's hidden width) still shrink.
        b.pin(
            axis, f"channel dim split over two dims at '{node.name}' (a shuffle's order depends on the channel count)"
        )
        return Axis(d, axis.segments, Grid((after[d], after[d + 1]), (after[d + 1], 1)))  # channel shuffle, step 1
    if after[: d + 1] == before[: d + 1] and len(after) >= d + 1:
        return axis if _prod(after[d + 1 :]) == _prod(before[d + 1 :]) else b.unknown(node, "reshape")
    if len(after) == d + 1 and after[:d] == before[:d]:
        return _flatten_axis(b, node, d, len(before) - 1)
    return b.keep(node, f"a reshape from {list(before)} to {list(after)} across the channel dim")


def _merge_grid(axis: Axis, grid: Grid) -> Axis:
    """The permuted axis a channel shuffle leaves: one segment per run of consecutive channels."""
    flat = [(seg.space, c) for seg in axis.segments for c in range(seg.start, seg.stop)]
    segs: list[Segment] = []
    for space, c in (flat[p] for p in grid.merged_order()):
        last = segs[-1] if segs else None
        if last is not None and last.space == space and last.stop == c:
            segs[-1] = Segment(space, last.start, c + 1)
        else:
            segs.append(Segment(space, c, c + 1))
    return Axis(axis.dim, tuple(segs))


def layout_only(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """``contiguous``/``clone``: same values, so the same axis (a split one included)."""
    return b.axis(node.args[0])


def _prod(xs: tuple[int, ...]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def add(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """Residual add: both operands' channels are the same channels, so their spaces merge.

    With a tensor that has no channel axis, channel ``c`` meets an entry of it: a free
    tensor of the model (a position embedding, ConvNeXt's layer scale) is sliced with the
    channels (see :meth:`GraphBuilder.free_tensor`); anything else (a mask, a computed
    tensor) keeps them: pinned, which is always exact.
    """
    return _elementwise(b, node, Combine.SUM)


def _elementwise(b: GraphBuilder, node: fx.Node, combine: Combine) -> Axis | None:
    axes = [b.axis(a) for a in node.args[:2]]
    tensors = [a for a in node.args[:2] if isinstance(b.value(a), torch.Tensor)]
    present = axes[0] or axes[1]
    out = b.value(node)
    if len(tensors) < 2 or (axes[0] is None) != (axes[1] is None):
        if present is None:
            return None
        shifted = Axis(present.dim + out.dim() - _dims_of(b, node, present), present.segments)
        if len(tensors) == 2:
            _slice_or_pin(b, node, present, shifted, combine)
        return shifted
    a, c = axes
    if a is None or c is None:
        return None
    nd = out.dim()
    da, dc = a.dim + nd - b.value(node.args[0]).dim(), c.dim + nd - b.value(node.args[1]).dim()  # broadcasting
    if da != dc or a.size != c.size:
        return b.unknown(node, f"{_op_name(node)} of tensors whose channel axes differ")
    merge_or_keep(b, node, a, c)
    return Axis(da, a.segments)


def merge_or_keep(b: GraphBuilder, node: fx.Node, a: Axis, c: Axis) -> None:
    """Position ``p`` of axis ``a`` meets position ``p`` of axis ``c``: the spaces merge
    when both axes are cut alike from spaces of equal sizes; otherwise (a split piece against a
    whole space, a concat against one conv) no merge can say it, and the channels stay."""
    alike = [
        (sa.start, sa.stop, sa.repeat) == (sc.start, sc.stop, sc.repeat)
        and b.g.table.get(sa.space).size == b.g.table.get(sc.space).size
        for sa, sc in zip(a.segments, c.segments, strict=False)
    ]
    if len(a.segments) != len(c.segments) or not all(alike):
        why = f"{_op_name(node)} of differently cut channel axes at '{node.name}'"
        b.pin(a, why)
        b.pin(c, why)
        return
    for sa, sc in zip(a.segments, c.segments, strict=True):
        b.g.table.union(sa.space, sc.space)


def _slice_or_pin(b: GraphBuilder, node: fx.Node, axis: Axis, shifted: Axis, combine: Combine) -> None:
    """The operand of ``node`` without channel axis is sliced with the channels of ``axis``
    when it is a free tensor varying along them; otherwise the channels stay."""
    x, other = node.args[:2] if b.axis(node.args[0]) is axis else node.args[1::-1]
    v = b.value(other)
    d = shifted.dim - (b.value(node).dim() - v.dim())  # the other operand's dim aligned with the channels
    found = b.free_tensor(other, d, node, axis) if d >= 0 and v.shape[d] != 1 else "constant along the channels"
    if isinstance(found, str):
        why = f" ({found})" if b.param(other) is not None else ""
        b.pin(axis, f"{_op_name(node)} with a tensor without channel axis at '{node.name}'{why}")
    else:
        b.free_use(node, axis, found, combine, numerator=x is node.args[0])


def _dims_of(b: GraphBuilder, node: fx.Node, axis: Axis) -> int:
    """Number of dims of the operand of ``node`` that carries ``axis``."""
    for arg in node.args[:2]:
        if b.axis(arg) is axis:
            nd: int = b.value(arg).dim()
            return nd
    raise AssertionError("axis not found among the operands")


def scalar_mul(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """Division by a number (or a tensor without channel axis) keeps the channels; by (or
    of) a free tensor of the model varying along them, that tensor is sliced with them."""
    tensors = [a for a in node.args[:2] if isinstance(b.value(a), torch.Tensor)]
    if len(tensors) == 1:
        return b.axis(tensors[0])
    axes = [b.axis(a) for a in node.args[:2]]
    if (axes[0] is None) != (axes[1] is None) and any(b.param(a) is not None for a in node.args[:2]):
        return _elementwise(b, node, Combine.QUOTIENT)
    return b.unknown(node, "a division of two tensors")


def mul(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """Scaling by a number passes channels through; a product of two channel tensors
    (squeeze-excitation gating ``x * s`` with ``s`` of shape ``(N, C, 1, 1)``) ties channel
    ``c`` of both factors together, like an add."""
    tensors = [a for a in node.args[:2] if isinstance(b.value(a), torch.Tensor)]
    if len(tensors) == 1:
        return b.axis(tensors[0])
    return _elementwise(b, node, Combine.PRODUCT)


def _op_name(node: fx.Node) -> str:
    return f"'{getattr(node.target, '__name__', node.target)}'"


def norm_across_channels(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """LayerNorm / GroupNorm normalize *across* channels: removing one, even an all-zero
    one, changes every other channel's statistics, so the channels they see stay."""
    axis = b.axis(node.args[0])
    b.pin(axis, f"normalized across channels by '{node.target}'")
    return axis


def split(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """``split``/``chunk`` along the channel dim: each piece gets its slice of the segments.

    The output is a tuple; ``getitem`` picks the piece (see :func:`getitem`). The axes of
    the pieces are stored under ``<node>.<i>``.
    """
    axis = b.axis(node.args[0])
    pieces = b.value(node)
    if axis is None:
        return None
    nd = b.value(node.args[0]).dim()
    args = node_args(node)
    dim = node_kwargs(node).get("dim", args[2] if len(args) > 2 else 0) % nd
    if dim != axis.dim:
        for i, _ in enumerate(pieces):
            b.g.axes[f"{node.name}.{i}"] = axis
        return axis
    # the sizes are fixed in the model's code (or computed from the channel count): with
    # fewer channels the pieces would be cut elsewhere, so the split channels stay
    b.pin(axis, f"split along the channel dim at '{node.name}'")
    start = 0
    for i, piece in enumerate(pieces):
        width = piece.shape[dim]
        b.g.axes[f"{node.name}.{i}"] = _slice_axis(b, node, axis, start, start + width)
        start += width
    return axis


def _slice_axis(b: GraphBuilder, node: fx.Node, axis: Axis, lo: int, hi: int) -> Axis:
    """Positions ``lo..hi`` of ``axis`` as segments. A cut through a flattened channel
    (part of its positions on each side) leaves a piece no segment describes: its
    positions become a new space, kept whole like the input it was cut from."""
    segs, offset = [], 0
    for seg in axis.segments:
        a, z = max(lo, offset), min(hi, offset + seg.width)
        if a < z:
            if (a - offset) % seg.repeat or (z - offset) % seg.repeat:
                why = f"split through a flattened channel at '{node.name}'"
                b.pin(axis, why)
                piece = b.new_space(node, hi - lo, axis.dim)
                b.pin(piece, why)
                return piece
            first = seg.start + (a - offset) // seg.repeat
            segs.append(Segment(seg.space, first, first + (z - a) // seg.repeat, seg.repeat))
        offset += seg.width
    return Axis(axis.dim, tuple(segs))


def getitem(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """Picking a piece of a split, or indexing that leaves the channel dim whole."""
    source, index = node.args[0], node.args[1]
    if isinstance(b.value(source), (tuple, list)):
        return b.g.axes.get(f"{source.name}.{index}") if isinstance(source, fx.Node) else None
    axis = b.axis(source)
    if axis is None:
        return None
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index) or any(not isinstance(i, (int, slice)) and i is not None for i in index):
        return b.unknown(node, "indexing with tensors or ellipsis of a channel tensor")
    src, dst, channel_at = 0, 0, None  # dims of the input and of the output walked so far
    for i in index:
        if i is None:  # a new dim of size 1
            dst += 1
            continue
        if src == axis.dim:
            if i != slice(None):
                return b.unknown(node, "indexing into the channel dim")
            channel_at = dst
        src += 1
        dst += 0 if isinstance(i, int) else 1
    return Axis(channel_at if channel_at is not None else dst + axis.dim - src, axis.segments)


def transpose(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """``transpose``/``permute``/``movedim``: the channel dim moves, channels unchanged."""
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    nd = b.value(node.args[0]).dim()
    before = list(range(nd))
    args = node_args(node)
    if node.target in ("transpose", torch.transpose):
        d0, d1 = (int(d) % nd for d in args[1:3])
        before[d0], before[d1] = before[d1], before[d0]
    else:  # permute(x, dims) or x.permute(*dims)
        dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        before = [int(d) % nd for d in dims]
    if axis.grid is None:
        return Axis(before.index(axis.dim), axis.segments)
    first, second = before.index(axis.dim), before.index(axis.dim + 1)
    if second == first + 1:
        return Axis(first, axis.segments, axis.grid)
    if first == second + 1:  # the two dims swapped: channel shuffle, step 2
        g = axis.grid
        return Axis(second, axis.segments, Grid(g.sizes[::-1], g.strides[::-1]))
    return b.keep(node, "a permute that separates the two dims of a split channel axis")


def cat(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """Concat along the channel dim joins the segments; along another dim (tokens, as with
    a ViT's class token) the parts share their channels: spaces merge, and a part without
    channel axis is sliced with them when it is a free tensor of the model (a class token
    ``cls.expand(B, -1, -1)``, see :func:`_free_part`), else pins them."""
    args = node_args(node)
    parts = args[0]
    dim = args[1] if len(args) > 1 else node_kwargs(node).get("dim", 0)
    axes = [b.axis(p) for p in parts]
    nd = b.value(node).dim()
    dim %= nd
    if all(a is not None and a.dim == dim for a in axes):
        return Axis(dim, tuple(s for a in axes if a is not None for s in a.segments))
    known = [a for a in axes if a is not None]
    if not known or any(a.dim == dim for a in known):
        return b.unknown(node, "a concat mixing channel and non-channel tensors along the channel dim")
    first = known[0]
    for other in known[1:]:
        if other.size != first.size or other.dim != first.dim:
            return b.unknown(node, "a concat of tensors whose channel axes differ")
        merge_or_keep(b, node, first, other)
    if len(known) < len(axes):
        found = [_free_part(b, node, p, first) for p, a in zip(parts, axes, strict=True) if a is None]
        why = next((f for f in found if isinstance(f, str)), None)
        if why is not None:
            b.pin(first, f"concat with a tensor without channel axis at '{node.name}' ({why})")
        else:
            for where in found:
                assert not isinstance(where, str)
                b.free_use(node, first, where, Combine.SUM)  # the concat holds both: zero where both are
    return first


def _free_part(b: GraphBuilder, node: fx.Node, part: object, axis: Axis) -> Slice | str:
    """The free tensor a part of a concat along tokens is, with its dim holding the channels
    of ``axis``: a parameter read as it is, or broadcast over the batch by an ``expand``
    that keeps the channel dim's size (``-1``), read by nothing else."""
    if b.param(part) is not None:
        return b.free_tensor(part, axis.dim, node, axis)
    sizes = _expand_sizes(part)
    if sizes is None or not isinstance(part, fx.Node) or b.param(part.args[0]) is None:
        return "a computed tensor"
    source = part.args[0]
    d = axis.dim - (b.value(part).dim() - b.value(source).dim())  # the parameter's dim expanded into the channel dim
    keeps = isinstance(sizes[axis.dim], int) and sizes[axis.dim] == -1  # a literal size would not shrink
    if d < 0 or not keeps or b.value(source).shape[d] != axis.size or len(part.users) != 1:
        return f"'{part.name}' expands the channel dim or is read elsewhere"
    return b.free_tensor(source, d, part, axis)


def _expand_sizes(node: object) -> list[object] | None:
    """The sizes of an ``expand`` (ATen ``expand(x, sizes)`` or ``x.expand(*sizes)``), else None."""
    if not isinstance(node, fx.Node):
        return None
    args = node_args(node)
    if getattr(node.target, "overloadpacket", None) is torch.ops.aten.expand and len(args) == 2:
        return list(args[1])
    if node.op == "call_method" and node.target == "expand":
        return list(args[1]) if len(args) == 2 and isinstance(args[1], (tuple, list)) else list(args[1:])
    return None


def attention(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """``nn.MultiheadAttention``: the model-width channels it reads and writes are kept;
    its heads are removed as units of their own (see ``shrinkage.layers.attention``).
    Output is ``(attn_output, weights)``."""
    for arg in b.tensor_inputs(node):
        b.pin(b.axis(arg), f"input of attention '{node.target}'")
    if _reads_attention_weights(node):  # removing heads would change them: every head stays
        b.g.heads_fixed.add(str(node.target))
    out = b.value(node)[0]
    axis = b.new_space(node, out.shape[-1], out.dim() - 1)
    b.pin(axis, f"output of attention '{node.target}'")
    b.g.axes[f"{node.name}.0"] = axis
    return axis


def _reads_attention_weights(node: fx.Node) -> bool:
    """Whether the model uses output 1 (the weights) or the output tuple as a whole."""
    for user in node.users:
        if user.target is not operator.getitem:
            return True
        if user.args[1] != 0 and user.users:
            return True
    return False


def embedding(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """Embedding rows are looked up by index: the output channels are a new (kept) space."""
    out = b.value(node)
    axis = b.new_space(node, out.shape[-1], out.dim() - 1)
    b.pin(axis, f"embedding '{node.target}' (its width is the model width)")
    return axis


def reduce(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """``mean``/``sum``/``amax`` over non-channel dims (global pooling): channels pass through."""
    axis = b.axis(node.args[0])
    if axis is None:
        return None
    nd = b.value(node.args[0]).dim()
    args, kwargs = node_args(node), node_kwargs(node)
    given: int | list[int] | tuple[int, ...] | None = args[1] if len(args) > 1 else kwargs.get("dim")
    keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if given is None:
        return b.unknown(node, f"a full reduction ({node.target}) of a channel tensor")
    dims = {d % nd for d in ((given,) if isinstance(given, int) else given)}
    if axis.dim in dims:
        return b.unknown(node, f"a reduction ({node.target}) over the channel dim")
    return axis if keepdim else Axis(axis.dim - sum(d < axis.dim for d in dims), axis.segments)


def size_like(b: GraphBuilder, node: fx.Node) -> Axis | None:
    return None


def _torchvision_rules(rules: RuleSet) -> None:
    """Ops of torchvision models, when torchvision is installed (it is optional)."""
    try:
        from torchvision.ops import StochasticDepth, stochastic_depth
    except ImportError:
        return
    # drops whole samples (rows of the batch) in training, identity in eval: per-channel safe
    rules.functions[stochastic_depth] = passthrough
    rules.modules[StochasticDepth] = passthrough


mark((reshape, transpose, layout_only), handles_grid=True)
# Ops that compute correctly on a tensor with no channels (a removed branch). Pooling,
# reshapes, splits and reductions are not marked: some PyTorch kernels refuse an empty
# channel dim, and a space they touch keeps one channel instead.
mark((passthrough, layout_only, add, mul, scalar_mul, conv, linear, batchnorm), zero_width=True)


def _padding_of(node: fx.Node, module: nn.Module | None) -> bool:
    """Whether the op pads its input (a non-zero constant channel then becomes a border
    pattern): an average pool or a convolution with non-zero padding."""
    padding: str | int | Sequence[int]
    if module is not None:
        if not isinstance(module, nn.modules.pooling._AvgPoolNd | nn.modules.conv._ConvNd):
            return False
        # _AvgPoolNd leaves ``padding`` to its subclasses (AvgPool1d/2d/3d), which all set it
        padding = cast(str | int | Sequence[int], module.padding)
    else:
        if node.target not in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d):
            return False
        args = node_args(node)
        padding = args[3] if len(args) > 3 else node_kwargs(node).get("padding", 0)
    return isinstance(padding, str) or any(int(p) != 0 for p in ((padding,) if isinstance(padding, int) else padding))


mark((spatial, conv), pads=_padding_of)


def default_rules() -> RuleSet:
    rules = RuleSet()
    cls: type[nn.Module]
    fn: object  # a function or builtin the rule is keyed on
    for cls in _ELEMENTWISE_MODULES:
        rules.modules[cls] = passthrough
    for cls in _SPATIAL_MODULES:
        rules.modules[cls] = spatial
    # layers that own sliced parameters: their rule comes with their layer type, registered once
    from shrinkage.compact.layer_types import registered_layer_types  # that registry imports this module

    for cls, layer_type in registered_layer_types():
        if layer_type.fx_rule is not None:
            rules.modules[cls] = layer_type.fx_rule
    rules.modules[nn.Flatten] = flatten_module
    for cls in (nn.LayerNorm, nn.GroupNorm):
        rules.modules[cls] = norm_across_channels
    rules.modules[nn.MultiheadAttention] = attention
    rules.modules[HeadPrunedAttention] = attention
    rules.modules[nn.Embedding] = embedding
    for fn in _ELEMENTWISE_FUNCTIONS:
        rules.functions[fn] = passthrough
    for fn in _SPATIAL_FUNCTIONS:
        rules.functions[fn] = spatial
    for fn in (operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub):
        rules.functions[fn] = add
    for fn in (operator.mul, operator.imul, torch.mul):
        rules.functions[fn] = mul
    rules.functions[operator.truediv] = scalar_mul
    rules.functions[operator.itruediv] = scalar_mul
    for fn in (torch.split, torch.chunk):
        rules.functions[fn] = split
    rules.functions[operator.getitem] = getitem
    for fn in (torch.transpose, torch.permute):
        rules.functions[fn] = transpose
    for fn in (F.layer_norm, F.group_norm):
        rules.functions[fn] = norm_across_channels
    rules.functions[torch.flatten] = flatten_call
    rules.functions[torch.cat] = cat
    for fn in (torch.mean, torch.sum, torch.amax):
        rules.functions[fn] = reduce
    rules.methods.update({m: passthrough for m in _ELEMENTWISE_METHODS})
    rules.methods.update({"contiguous": layout_only, "clone": layout_only})
    rules.methods.update({"flatten": flatten_call, "view": reshape, "reshape": reshape, "add": add, "add_": add})
    rules.methods.update({"mul": mul, "div": scalar_mul, "size": size_like, "dim": size_like})
    rules.methods.update({"sub": add, "sub_": add, "mul_": mul, "div_": scalar_mul})
    rules.methods.update({"split": split, "chunk": split, "transpose": transpose, "permute": transpose})
    _torchvision_rules(rules)
    rules.methods.update({"mean": reduce, "sum": reduce, "amax": reduce})
    # attention written by hand, seen op by op: products of two activations and softmaxes
    # mix channels in ways no removal survives, so they keep what they read (exact; the
    # export capture removes such modules' heads whole, see graph.attention_heads)
    for fn in (operator.matmul, torch.matmul, torch.bmm, F.scaled_dot_product_attention, F.softmax, torch.softmax):
        rules.functions[fn] = keeps_channels
    rules.methods.update({m: keeps_channels for m in ("matmul", "bmm", "softmax", "repeat_interleave")})
    return rules


def keeps_channels(b: GraphBuilder, node: fx.Node) -> Axis | None:
    """A known op whose channels stay (see :meth:`GraphBuilder.keep`)."""
    return b.keep(node, f"{_label(node)} mixes channels")


def _label(node: fx.Node) -> str:
    target = node.target
    return f".{target}()" if node.op == "call_method" else str(getattr(target, "__name__", target))
