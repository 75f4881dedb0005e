"""Module layouts: describe a layer's constructor arguments as JSON and rebuild it.

A compacted or factorized model is the original architecture with some layers
replaced by smaller ones (or by a pair, or by a selection in front of a layer). Its
layout records, for each such layer, the type and constructor arguments; loading
rebuilds those layers inside a freshly constructed original model, then loads the
tensors. Nothing is unpickled: the description is plain JSON and the type names are
looked up in this module's registry, never imported by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from shrinkage.errors import ShrinkageError
from shrinkage.layers import (
    CroppedConv2d,
    HeadPrunedAttention,
    LoweredConv2d,
    SelectInputs,
    ZeroWidthConv,
    uninitialized,
)


@dataclass(frozen=True)
class LayoutCodec:
    """How one layer type becomes JSON (``encode``) and back (``decode``)."""

    encode: Callable[[nn.Module], dict[str, Any]]
    decode: Callable[[dict[str, Any]], nn.Module]


def _conv_args(m: nn.Module) -> dict[str, Any]:
    return {
        "in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
        "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
        "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None, "padding_mode": m.padding_mode,
    }  # fmt: skip


def _conv(cls: type[nn.Module]) -> LayoutCodec:
    def decode(a: dict[str, Any]) -> nn.Module:
        padding = a["padding"] if isinstance(a["padding"], str) else tuple(a["padding"])
        # uninitialized: every tensor arrives with the state dict
        return uninitialized(cls, a["in_channels"], a["out_channels"], tuple(a["kernel_size"]), stride=tuple(a["stride"]),
                   padding=padding, dilation=tuple(a["dilation"]), groups=a["groups"], bias=a["bias"],
                   padding_mode=a["padding_mode"])

    return LayoutCodec(_conv_args, decode)


def _zero_width_decode(a: dict[str, Any]) -> nn.Module:
    padding = a["padding"] if isinstance(a["padding"], str) else tuple(a["padding"])
    return ZeroWidthConv(a["in_channels"], a["out_channels"], tuple(a["kernel_size"]), tuple(a["stride"]), padding,
                         tuple(a["dilation"]), bias=a["bias"], padding_mode=a["padding_mode"])


def _attention_args(m: HeadPrunedAttention) -> dict[str, Any]:
    return {
        "embed_dim": m.embed_dim, "num_heads": m.num_heads, "head_dim": m.head_dim, "original_heads": m.original_heads,
        "kdim": m.kdim, "vdim": m.vdim, "bias": m.q_proj.bias is not None, "out_bias": m.out_proj.bias is not None,
        "dropout": m.dropout, "batch_first": m.batch_first,
    }  # fmt: skip


def _attention_decode(a: dict[str, Any]) -> nn.Module:
    # the projections are uninitialized here; their tensors (and ``kept``) come with the state dict
    return HeadPrunedAttention(a["embed_dim"], a["num_heads"], a["head_dim"], a["original_heads"], kdim=a["kdim"],
                               vdim=a["vdim"], bias=a["bias"], out_bias=a["out_bias"], dropout=a["dropout"],
                               batch_first=a["batch_first"])


def _batchnorm(cls: type[nn.Module]) -> LayoutCodec:
    return LayoutCodec(
        lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
                   "track_running_stats": m.track_running_stats},
        lambda a: cls(a["num_features"], eps=a["eps"], momentum=a["momentum"], affine=a["affine"],
                      track_running_stats=a["track_running_stats"]),
    )


def _lowered_decode(a: dict[str, Any]) -> nn.Module:
    conv = nn.Conv2d(a["in_channels"], a["out_channels"], tuple(a["kernel_size"]), stride=tuple(a["stride"]),
                     padding=tuple(a["padding"]), dilation=tuple(a["dilation"]), bias=a["bias"], device="meta")
    # the real weight, bias and column indices arrive with the state dict
    layer = LoweredConv2d(conv.to_empty(device="cpu"), torch.zeros(a["columns"], dtype=torch.long))
    return layer


def _cropped_args(m: CroppedConv2d) -> dict[str, Any]:
    return {
        "in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
        "stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation), "offset": list(m.offset),
        "full_kernel_size": list(m.full_kernel_size), "bias": m.bias is not None,
    }  # fmt: skip


def _cropped_decode(a: dict[str, Any]) -> nn.Module:
    # the weight and bias arrive with the state dict
    return CroppedConv2d(a["in_channels"], a["out_channels"], tuple(a["kernel_size"]), tuple(a["stride"]),
                         tuple(a["padding"]), tuple(a["dilation"]), tuple(a["offset"]), tuple(a["full_kernel_size"]),
                         bias=a["bias"])


CODECS: dict[type[nn.Module], LayoutCodec] = {
    nn.Conv1d: _conv(nn.Conv1d),
    nn.Conv2d: _conv(nn.Conv2d),
    nn.Conv3d: _conv(nn.Conv3d),
    nn.Linear: LayoutCodec(
        lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
        lambda a: uninitialized(nn.Linear, a["in_features"], a["out_features"], bias=a["bias"]),
    ),
    nn.BatchNorm1d: _batchnorm(nn.BatchNorm1d),
    nn.BatchNorm2d: _batchnorm(nn.BatchNorm2d),
    nn.BatchNorm3d: _batchnorm(nn.BatchNorm3d),
    ZeroWidthConv: LayoutCodec(_conv_args, _zero_width_decode),
    nn.Identity: LayoutCodec(lambda m: {}, lambda a: nn.Identity()),
    HeadPrunedAttention: LayoutCodec(_attention_args, _attention_decode),
    # containers made by compaction/factorization: children are described by their own entries
    nn.Sequential: LayoutCodec(lambda m: {"children": [n for n, _ in m.named_children()]},
                               lambda a: nn.Sequential()),
    SelectInputs: LayoutCodec(
        lambda m: {"dim": m.dim, "kept": m.index.numel()},
        lambda a: SelectInputs(torch.zeros(a["kept"], dtype=torch.long), a["dim"]),
    ),
    LoweredConv2d: LayoutCodec(
        lambda m: {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
                   "stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation),
                   "bias": m.bias is not None, "columns": m.columns.numel()},
        _lowered_decode,
    ),
    CroppedConv2d: LayoutCodec(_cropped_args, _cropped_decode),
}
_BY_NAME = {cls.__name__: cls for cls in CODECS}


def describe(model: nn.Module) -> dict[str, dict[str, Any]]:
    """``{module name: {"type": ..., "args": ...}}`` for every layer of a registered type."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        codec = CODECS.get(type(module))
        if name and codec is not None:
            out[name] = {"type": type(module).__name__, "args": codec.encode(module)}
    return out


def rebuild(base: nn.Module, layout: dict[str, dict[str, Any]]) -> nn.Module:
    """Replace, inside ``base`` (in place), every layer whose description differs from it."""
    from shrinkage.compact.surgery import set_submodule

    for name in sorted(layout, key=lambda n: n.count(".")):  # parents before their children
        entry = layout[name]
        cls = _BY_NAME.get(entry.get("type"))
        if cls is None:
            raise ShrinkageError(f"layout entry '{name}' has unknown layer type {entry.get('type')!r}")
        try:
            current = base.get_submodule(name)
        except AttributeError:
            current = None
        codec = CODECS[cls]
        if current is not None and type(current) is cls and codec.encode(current) == entry["args"]:
            continue
        new = codec.decode(entry["args"])
        if current is not None:
            new.train(current.training)
        if cls is nn.Sequential:  # placeholders keep the child order; each child is rebuilt next
            for child in entry["args"]["children"]:
                new.add_module(child, nn.Identity())
        try:
            set_submodule(base, name, new)
        except AttributeError as exc:
            raise ShrinkageError(f"layout entry '{name}' has no parent module in {type(base).__name__}") from exc
    return base
