"""Module layouts: describe a layer's constructor arguments as JSON and rebuild it.

A compacted or factorized model is the original architecture with some layers
replaced by smaller ones (or by a pair, or by a selection in front of a layer). Its
layout records, for each such layer, the type and constructor arguments; loading
rebuilds those layers inside a freshly constructed original model, then loads the
tensors. Nothing is unpickled: the description is plain JSON and the type names are
looked up in this module's registry, never imported by name.

Each codec also declares what a file may say about its layer (``args``: a schema), which
base layers it can stand in for, how its sizes are bounded by the base layer (see
:mod:`shrinkage.compact.layout_bounds`) and which children it creates, so a layout is
checked completely before anything is built (:mod:`shrinkage.compact.layout_plan`).

A shrunk subclass of a registered layer (timm's ``BatchNormAct2d``, ``Conv2dSame``, a
user's ``nn.Linear`` subclass) keeps its own type, which no codec knows by name. It is
described by the codec of its nearest registered base class, with its own class name
under ``"subclass"``; loading rebuilds it as a resized copy of the base model's own layer
at that name (same class, same extra attributes and children), never from the name.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from shrinkage.compact.layout_bounds import Bound, Limits, within
from shrinkage.compact.layout_schema import (
    AnyObject,
    AnyOf,
    Bool,
    Int,
    ListOf,
    MapOf,
    Nullable,
    Number,
    Record,
    Schema,
    SchemaMismatch,
    Text,
    parse_json,
)
from shrinkage.compact.module_attrs import ConvLike, tensor_attr
from shrinkage.layers import (
    CroppedConv2d,
    HeadPrunedAttention,
    LoweredConv2d,
    SelectInputs,
    ZeroWidthConv,
    uninitialized,
)

Args = dict[str, Any]


def _unbounded(a: Args, limits: Limits) -> Iterable[Bound]:
    return ()


def _childless(a: Args) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class LayoutCodec:
    """How one layer type becomes JSON (``encode``) and back (``decode``).

    ``args``: the schema of ``encode``'s output; ``stands_for``: the base layer types this
    layer may replace (besides its own type); ``bounds``: the sizes in ``args`` and the
    limits the base layer sets on them; ``children``: the submodules ``decode`` creates,
    as placeholders (each rebuilt from its own entry) when ``placeholders``.

    ``resizable``: the ``args`` a subclass of the layer may take from a file, when it is
    rebuilt by :meth:`resized` from the base model's own layer (empty: subclasses are not
    described). Every other arg must equal the base layer's: a subclass may derive state
    from them in its constructor, which a copy cannot redo.
    """

    encode: Callable[[nn.Module], Args]
    decode: Callable[[Args], nn.Module]
    args: Record
    stands_for: tuple[type[nn.Module], ...]
    bounds: Callable[[Args, Limits], Iterable[Bound]] = _unbounded
    children: Callable[[Args], tuple[str, ...]] = _childless
    placeholders: bool = False
    resizable: tuple[str, ...] = ()

    def resized(self, layer: nn.Module, a: Args) -> nn.Module:
        """A copy of ``layer`` (a subclass instance from the base model) with the sizes of ``a``.

        ``decode(a)`` makes a plain layer of those sizes; the copy takes its tensors (the
        ones a plain layer has: the file fills them) and its ``resizable`` attributes, and
        keeps everything else of ``layer``: its type, other attributes, tensors and children."""
        plain = self.decode(a)
        own = {**plain._parameters, **plain._buffers}
        held = {**layer._parameters, **layer._buffers}
        memo: dict[int, object] = {id(held[n]): None for n in own if held.get(n) is not None}  # not copied first
        new = copy.deepcopy(layer, memo)
        for name, tensor in plain._parameters.items():
            old = layer._parameters.get(name)
            if tensor is not None and old is not None:
                tensor.requires_grad_(old.requires_grad)
            new._parameters[name] = tensor
        for name, buffer in plain._buffers.items():
            new._buffers[name] = buffer
        for key in self.resizable:
            if key not in own:  # ``bias``: a tensor, set above
                setattr(new, key, getattr(plain, key))
        return new


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _per_dim(dims: int | None, item: Schema) -> ListOf:
    """One value per spatial dimension: ``dims`` of them, or 1 to 3 when the type allows any."""
    return ListOf(item, length=dims) if dims else ListOf(item, min_length=1, max_length=3)


def _conv_schema(dims: int | None) -> Record:
    positive = _per_dim(dims, Int(1))
    return Record({
        "in_channels": Int(0), "out_channels": Int(0), "kernel_size": positive, "stride": positive,
        "padding": AnyOf((_per_dim(dims, Int(0)), Text(("same", "valid")))), "dilation": positive,
        "groups": Int(1), "bias": Bool(), "padding_mode": Text(PADDING_MODES),
    })  # fmt: skip


def _geometry_bounds(a: Args, limits: Limits) -> Iterator[Bound]:
    """Channels and kernel taps are sizes: at most the base layer's. Stride and dilation are
    not (a fresh base model may be configured differently; the file's geometry wins), but
    padding beyond the base layer's and beyond the kernel's own reach only adds zeros, so
    it is bounded: a layout cannot make a layer pad its input by 10**12."""
    yield Bound("in_channels", a["in_channels"], limits.inputs)
    yield Bound("out_channels", a["out_channels"], limits.outputs)
    yield from within("kernel_size", a["kernel_size"], limits.kernel)
    if isinstance(a["padding"], str):
        return
    reach = [d * (k - 1) for d, k in zip(a["dilation"], a["kernel_size"], strict=False)]
    pads = limits.padding or (0,) * len(reach)
    yield from within("padding", a["padding"], tuple(max(p, r) for p, r in zip(pads, reach, strict=False)))


def _conv_bounds(a: Args, limits: Limits) -> Iterator[Bound]:
    yield from _geometry_bounds(a, limits)
    yield Bound("groups", a["groups"], limits.groups)


def _conv_args(module: nn.Module) -> Args:
    m = cast(ConvLike, module)  # the codec of a conv type (a ZeroWidthConv's too)
    return {
        "in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
        "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None, "padding_mode": m.padding_mode,
    }  # fmt: skip


#: what compaction changes in a conv subclass's sliced copy (a folded constant may add a bias)
_CONV_SIZES = ("in_channels", "out_channels", "groups", "bias")


def _conv(cls: type[nn.Module], dims: int) -> LayoutCodec:
    def decode(a: Args) -> nn.Module:
        padding = a["padding"] if isinstance(a["padding"], str) else tuple(a["padding"])
        # uninitialized: every tensor arrives with the state dict
        return uninitialized(
            cls,
            a["in_channels"],
            a["out_channels"],
            tuple(a["kernel_size"]),
            stride=tuple(a["stride"]),
            padding=padding,
            dilation=tuple(a["dilation"]),
            groups=a["groups"],
            bias=a["bias"],
            padding_mode=a["padding_mode"],
        )

    return LayoutCodec(_conv_args, decode, _conv_schema(dims), (cls,), _conv_bounds, resizable=_CONV_SIZES)


def _zero_width_decode(a: Args) -> nn.Module:
    padding = a["padding"] if isinstance(a["padding"], str) else tuple(a["padding"])
    return ZeroWidthConv(
        a["in_channels"],
        a["out_channels"],
        tuple(a["kernel_size"]),
        tuple(a["stride"]),
        padding,
        tuple(a["dilation"]),
        bias=a["bias"],
        padding_mode=a["padding_mode"],
    )


def _zero_width_bounds(a: Args, limits: Limits) -> Iterator[Bound]:
    yield from _conv_bounds(a, limits)
    yield Bound("min(in_channels, out_channels)", min(a["in_channels"], a["out_channels"]), 0)


def _attention_args(m: nn.Module) -> Args:
    assert isinstance(m, HeadPrunedAttention)  # the codec of HeadPrunedAttention
    return {
        "embed_dim": m.embed_dim, "num_heads": m.num_heads, "head_dim": m.head_dim, "original_heads": m.original_heads,
        "kdim": m.kdim, "vdim": m.vdim, "bias": m.q_proj.bias is not None, "out_bias": m.out_proj.bias is not None,
        "dropout": m.dropout, "batch_first": m.batch_first,
    }  # fmt: skip


def _attention_decode(a: Args) -> nn.Module:
    # the projections are uninitialized here; their tensors (and ``kept``) come with the state dict
    return HeadPrunedAttention(
        a["embed_dim"],
        a["num_heads"],
        a["head_dim"],
        a["original_heads"],
        kdim=a["kdim"],
        vdim=a["vdim"],
        bias=a["bias"],
        out_bias=a["out_bias"],
        dropout=a["dropout"],
        batch_first=a["batch_first"],
    )


_ATTENTION_SCHEMA = Record({
    "embed_dim": Int(1), "num_heads": Int(0), "head_dim": Int(1), "original_heads": Int(1), "kdim": Int(1),
    "vdim": Int(1), "bias": Bool(), "out_bias": Bool(), "dropout": Number(0, 1), "batch_first": Bool(),
})  # fmt: skip


def _attention_bounds(a: Args, limits: Limits) -> Iterator[Bound]:
    for key in ("embed_dim", "kdim", "vdim"):
        yield Bound(key, a[key], limits.inputs)
    yield Bound("original_heads", a["original_heads"], limits.heads)
    yield Bound("num_heads", a["num_heads"], a["original_heads"])
    yield Bound("head_dim", a["head_dim"], limits.head_dim)


def _batchnorm(cls: type[nn.Module]) -> LayoutCodec:
    return LayoutCodec(
        lambda m: {
            "num_features": m.num_features,
            "eps": m.eps,
            "momentum": m.momentum,
            "affine": m.affine,
            "track_running_stats": m.track_running_stats,
        },
        lambda a: cls(
            a["num_features"],
            eps=a["eps"],
            momentum=a["momentum"],
            affine=a["affine"],
            track_running_stats=a["track_running_stats"],
        ),
        Record(
            {
                "num_features": Int(0),
                "eps": Number(0),
                "momentum": Nullable(Number(0, 1)),
                "affine": Bool(),
                "track_running_stats": Bool(),
            }
        ),
        (cls,),
        lambda a, limits: (Bound("num_features", a["num_features"], limits.outputs),),
        resizable=("num_features",),
    )


def _lowered_args(m: nn.Module) -> Args:
    assert isinstance(m, LoweredConv2d)  # the codec of LoweredConv2d
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": list(m.kernel_size),
        "stride": list(m.stride),
        "padding": list(m.padding),
        "dilation": list(m.dilation),
        "bias": m.bias is not None,
        "columns": tensor_attr(m, "columns").numel(),
    }


def _lowered_decode(a: Args) -> nn.Module:
    conv = nn.Conv2d(
        a["in_channels"],
        a["out_channels"],
        tuple(a["kernel_size"]),
        stride=tuple(a["stride"]),
        padding=tuple(a["padding"]),
        dilation=tuple(a["dilation"]),
        bias=a["bias"],
        device="meta",
    )
    # the real weight, bias and column indices arrive with the state dict
    layer = LoweredConv2d(conv.to_empty(device="cpu"), torch.zeros(a["columns"], dtype=torch.long))
    return layer


def _lowered_bounds(a: Args, limits: Limits) -> Iterator[Bound]:
    yield from _geometry_bounds(a, limits)
    kh, kw = a["kernel_size"]
    yield Bound("columns", a["columns"], a["in_channels"] * kh * kw)


def _cropped_args(m: nn.Module) -> Args:
    assert isinstance(m, CroppedConv2d)  # the codec of CroppedConv2d
    return {
        "in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
        "stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation), "offset": list(m.offset),
        "full_kernel_size": list(m.full_kernel_size), "bias": m.bias is not None,
    }  # fmt: skip


def _cropped_decode(a: Args) -> nn.Module:
    # the weight and bias arrive with the state dict
    return CroppedConv2d(
        a["in_channels"],
        a["out_channels"],
        tuple(a["kernel_size"]),
        tuple(a["stride"]),
        tuple(a["padding"]),
        tuple(a["dilation"]),
        tuple(a["offset"]),
        tuple(a["full_kernel_size"]),
        bias=a["bias"],
    )


def _cropped_bounds(a: Args, limits: Limits) -> Iterator[Bound]:
    yield from _geometry_bounds(a, limits)
    yield from within("full_kernel_size", a["full_kernel_size"], limits.kernel)
    for i, (offset, size, full) in enumerate(zip(a["offset"], a["kernel_size"], a["full_kernel_size"], strict=True)):
        yield Bound(f"offset[{i}] + kernel_size[{i}]", offset + size, full)


_PAIR, _PAIR0 = ListOf(Int(1), length=2), ListOf(Int(0), length=2)
_LOWERED_SCHEMA = Record({
    "in_channels": Int(1), "out_channels": Int(1), "kernel_size": _PAIR, "stride": _PAIR, "padding": _PAIR0,
    "dilation": _PAIR, "bias": Bool(), "columns": Int(0),
})  # fmt: skip
_CROPPED_SCHEMA = Record({
    "in_channels": Int(0), "out_channels": Int(0), "kernel_size": _PAIR, "stride": _PAIR, "padding": _PAIR0,
    "dilation": _PAIR, "offset": _PAIR0, "full_kernel_size": _PAIR, "bias": Bool(),
})  # fmt: skip


def matrix_codec(cls: type[nn.Module]) -> LayoutCodec:
    """Codec of a linear layer storing its weight as an ``(in, out)`` matrix (transformers'
    ``Conv1D``, constructed as ``cls(nf, nx)``): ``nx`` inputs, ``nf`` outputs."""

    def decode(a: Args) -> nn.Module:
        with torch.device("meta"):
            layer = cls(a["nf"], a["nx"])
        return layer.to_empty(device="cpu")  # every tensor arrives with the state dict

    return LayoutCodec(
        lambda m: {"nx": int(tensor_attr(m, "weight").shape[0]), "nf": int(tensor_attr(m, "weight").shape[1])},
        decode,
        Record({"nx": Int(0), "nf": Int(0)}),
        (cls,),
        lambda a, limits: (Bound("nx", a["nx"], limits.inputs), Bound("nf", a["nf"], limits.outputs)),
    )


#: layers a factorization or an input selection replaces by a container of smaller ones
_SPLIT = (nn.Linear, nn.Conv2d, nn.MultiheadAttention, HeadPrunedAttention)

CODECS: dict[type[nn.Module], LayoutCodec] = {
    nn.Conv1d: _conv(nn.Conv1d, 1),
    nn.Conv2d: _conv(nn.Conv2d, 2),
    nn.Conv3d: _conv(nn.Conv3d, 3),
    nn.Linear: LayoutCodec(
        lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
        lambda a: uninitialized(nn.Linear, a["in_features"], a["out_features"], bias=a["bias"]),
        Record({"in_features": Int(0), "out_features": Int(0), "bias": Bool()}),
        (nn.Linear, nn.MultiheadAttention, HeadPrunedAttention),  # also an attention's projections
        lambda a, limits: (
            Bound("in_features", a["in_features"], limits.inputs),
            Bound("out_features", a["out_features"], limits.outputs),
        ),
        resizable=("in_features", "out_features", "bias"),
    ),
    nn.BatchNorm1d: _batchnorm(nn.BatchNorm1d),
    nn.BatchNorm2d: _batchnorm(nn.BatchNorm2d),
    nn.BatchNorm3d: _batchnorm(nn.BatchNorm3d),
    nn.PReLU: LayoutCodec(
        lambda m: {"num_parameters": m.num_parameters},
        lambda a: uninitialized(nn.PReLU, a["num_parameters"]),
        Record({"num_parameters": Int(1)}),
        (nn.PReLU,),
        lambda a, limits: (Bound("num_parameters", a["num_parameters"], limits.outputs),),
    ),
    ZeroWidthConv: LayoutCodec(_conv_args, _zero_width_decode, _conv_schema(None), (_ConvNd,), _zero_width_bounds),
    nn.Identity: LayoutCodec(lambda m: {}, lambda a: nn.Identity(), Record({}), (_BatchNorm,)),  # BN of no channels
    HeadPrunedAttention: LayoutCodec(
        _attention_args,
        _attention_decode,
        _ATTENTION_SCHEMA,
        (nn.MultiheadAttention,),
        _attention_bounds,
        lambda a: ("q_proj", "k_proj", "v_proj", "out_proj"),
    ),
    # containers made by compaction/factorization: children are described by their own entries
    nn.Sequential: LayoutCodec(
        lambda m: {"children": [n for n, _ in m.named_children()]},
        lambda a: nn.Sequential(),
        Record({"children": ListOf(Text(parts=1), unique=True)}),
        _SPLIT,
        children=lambda a: tuple(a["children"]),
        placeholders=True,
    ),
    SelectInputs: LayoutCodec(
        lambda m: {"dim": m.dim, "kept": tensor_attr(m, "index").numel()},
        lambda a: SelectInputs(torch.zeros(a["kept"], dtype=torch.long), a["dim"]),
        Record({"dim": Int(-8, 8), "kept": Int(0)}),
        (nn.Linear, nn.Conv2d),
        lambda a, limits: (Bound("kept", a["kept"], limits.inputs),),
    ),
    LoweredConv2d: LayoutCodec(
        _lowered_args,
        _lowered_decode,
        _LOWERED_SCHEMA,
        (nn.Conv2d,),
        _lowered_bounds,
    ),
    CroppedConv2d: LayoutCodec(_cropped_args, _cropped_decode, _CROPPED_SCHEMA, (nn.Conv2d,), _cropped_bounds),
}
_BY_NAME = {cls.__name__: cls for cls in CODECS}


@dataclass(frozen=True)
class LayoutEntry:
    """One checked entry of a layout: the layer type and its constructor arguments;
    ``subclass``: the class name of a layer that is a subclass of ``cls``, rebuilt from the
    base model's own layer (see :meth:`LayoutCodec.resized`)."""

    cls: type[nn.Module]
    args: Args
    subclass: str | None = None

    @property
    def codec(self) -> LayoutCodec:
        return CODECS[self.cls]

    @property
    def kind(self) -> str:
        """The layer's class name, for messages (``BatchNormAct2d (a BatchNorm2d)``)."""
        return f"{self.subclass} (a {self.cls.__name__})" if self.subclass else self.cls.__name__

    def is_kind_of(self, module: nn.Module) -> bool:
        """``module`` is a layer of the class this entry names (not one of its relatives)."""
        if self.subclass is None:
            return type(module) is self.cls
        return type(module) is not self.cls and isinstance(module, self.cls) and type(module).__name__ == self.subclass

    def describes(self, module: nn.Module) -> bool:
        """``module`` is already the layer this entry describes (nothing to rebuild)."""
        return self.is_kind_of(module) and self.codec.encode(module) == self.args


#: module names: dotted, each part non-empty; deeper nesting than this is not a real model
_MODULE_NAME = Text(parts=64)
#: a class name as Python spells it: one name, no dots; never imported, only compared
_CLASS_NAME = Text(parts=1)


def _entry_schema() -> Record:
    return Record(
        {"type": Text(tuple(_BY_NAME)), "subclass": _CLASS_NAME, "args": AnyObject()}, frozenset({"subclass"})
    )


_ENTRY = _entry_schema()
_LAYOUT = MapOf(_MODULE_NAME, _ENTRY)


def register_codec(cls: type[nn.Module], codec: LayoutCodec) -> None:
    """Let ``save``/``load`` describe and rebuild layers of ``cls`` (a layer type's codec)."""
    global _ENTRY, _LAYOUT
    CODECS[cls] = codec
    _BY_NAME[cls.__name__] = cls
    _ENTRY = _entry_schema()
    _LAYOUT = MapOf(_MODULE_NAME, _ENTRY)


def codec_of(cls: type[nn.Module]) -> tuple[type[nn.Module], LayoutCodec] | None:
    """The registered class that describes layers of ``cls``, and its codec: ``cls`` itself,
    else its nearest registered base class when that codec can resize a subclass."""
    if cls in CODECS:
        return cls, CODECS[cls]
    base = next((c for c in cls.__mro__[1:] if c in CODECS), None)
    if base is None or not CODECS[base].resizable:
        return None
    return base, CODECS[base]


def describe(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {"type": ..., "args": ...}}`` for every layer of a registered type,
    with ``"subclass"`` for a subclass of one (described by its nearest registered base)."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        found = codec_of(type(module))
        if not name or found is None:
            continue
        cls, codec = found
        subclass = {"subclass": type(module).__name__} if cls is not type(module) else {}
        out[name] = {"type": cls.__name__, **subclass, "args": codec.encode(module)}
    return out


#: tensor names: a module name and the attribute; shapes: the dims of any tensor
_TENSOR_SHAPES = MapOf(Text(parts=65), ListOf(Int(0), max_length=16))


def describe_tensors(model: nn.Module) -> dict[str, list[int]]:
    """``{tensor name: shape}`` of every parameter and saved buffer of a module without
    layout codec: the free tensors compaction may have sliced with the channels they meet
    (a layer scale, a position embedding, a class token), which no layer entry sizes."""
    out: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        if codec_of(type(module)) is not None:
            continue
        for attr, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is not None and attr not in module._non_persistent_buffers_set:
                out[f"{name}.{attr}" if name else attr] = list(tensor.shape)
    return out


def parse_tensor_shapes(text: str, where: str = "tensors") -> dict[str, tuple[int, ...]]:
    """The ``{tensor name: shape}`` JSON ``text`` of :func:`describe_tensors`, checked."""
    raw = parse_json(text, where)
    _TENSOR_SHAPES.check(raw, where)
    assert isinstance(raw, dict)  # checked just above
    return {name: tuple(shape) for name, shape in raw.items()}


def parse_layout(text: str, where: str = "layout") -> dict[str, LayoutEntry]:
    """The layout JSON ``text`` checked against the schema of every entry's type; a
    :class:`~shrinkage.compact.layout_schema.SchemaMismatch` names the first bad key."""
    raw = parse_json(text, where)
    _LAYOUT.check(raw, where)
    assert isinstance(raw, dict)  # checked just above; tells the type checker
    entries: dict[str, LayoutEntry] = {}
    for name, item in raw.items():
        cls = _BY_NAME[item["type"]]
        CODECS[cls].args.check(item["args"], f"{where}[{name!r}].args")
        subclass = item.get("subclass")
        if subclass is not None and not CODECS[cls].resizable:
            raise SchemaMismatch(f"{where}[{name!r}].subclass", f"a subclass of {cls.__name__} cannot be rebuilt")
        entries[name] = LayoutEntry(cls, item["args"], subclass)
    return entries


__all__ = [
    "CODECS", "LayoutCodec", "LayoutEntry", "SchemaMismatch", "codec_of", "describe", "describe_tensors",
    "parse_layout", "parse_tensor_shapes", "register_codec",
]  # fmt: skip
