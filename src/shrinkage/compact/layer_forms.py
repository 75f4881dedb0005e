"""The exact forms of a compacted ``nn.Conv2d`` / ``nn.Linear`` whose weight has zero columns.

For a conv, a column is one ``(input channel, kernel row, kernel column)`` position
across all filters (SSL's filter shapes); for a linear, one input feature.

* :class:`Plain`: the layer as it is (zeros stay inside the weight);
* :class:`SelectedInputs`: drop the inputs no filter reads (a ``SelectInputs`` in front
  of a narrower layer);
* :class:`CroppedKernel` (conv): also cut the kernel's border rows/columns that are zero
  everywhere (``CroppedConv2d``);
* :class:`LoweredGemm` (conv): im2col + GEMM over the kept columns only (``LoweredConv2d``).

Grouped convs, convs with a non-zero padding mode or a string padding keep the plain form.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeGuard

import torch
from torch import Tensor, nn

from shrinkage.compact.forms import FormContext, LayerForm, register_form
from shrinkage.compact.module_attrs import tensor_attr
from shrinkage.compact.surgery import shrink
from shrinkage.layers import CroppedConv2d, LoweredConv2d, SelectInputs
from shrinkage.nonzero import any_nonzero


def _plain_conv(m: nn.Module) -> TypeGuard[nn.Conv2d]:
    return (
        isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
        and not isinstance(m.padding, str) and m.weight.numel() > 0
    )  # fmt: skip


def _column_use(m: nn.Module, ctx: FormContext) -> Tensor:
    """Bool ``(inputs, *kernel)``: which columns of the weight some output reads (one pass
    over the weight, shared by the forms of the layer through ``ctx``)."""
    weight = tensor_attr(m, "weight")  # the parameter itself: alive, so its id names it
    key = (id(weight), weight._version)
    if key not in ctx.shared:
        ctx.shared[key] = any_nonzero(weight, (0,))
    return ctx.shared[key]


def _used_inputs(m: nn.Module, ctx: FormContext) -> Tensor:
    """Bool ``(inputs,)``: which input channels / features some weight reads."""
    columns = _column_use(m, ctx)
    return columns.flatten(1).any(dim=1) if columns.dim() > 1 else columns


def _rounded(used: Tensor, round_to: int) -> Tensor:
    """Indices of ``used``, plus the first unused ones until their count is a multiple of
    ``round_to`` (or everything): an unused input reads zero weights, so keeping it is exact."""
    keep = used.clone()
    extra = (-int(keep.sum())) % round_to
    if extra:
        keep[(~keep).nonzero().flatten()[:extra]] = True
    return keep.nonzero().flatten()


def _selection(m: nn.Module, ctx: FormContext) -> Tensor | None:
    """The inputs to keep when selecting pays (some, not all, unused beyond the threshold)."""
    used = _used_inputs(m, ctx)
    if not used.any() or used.all() or (~used).float().mean() < ctx.select_min_fraction:
        return None
    idx = _rounded(used, ctx.round_to)
    return idx if len(idx) < len(used) else None


def _select_then(m: nn.Module, idx: Tensor, layer: nn.Module) -> nn.Module:
    dim = -1 if isinstance(m, nn.Linear) else 1
    return nn.Sequential(OrderedDict(select=SelectInputs(idx, dim), layer=layer)).train(m.training)


def _narrowed(m: nn.Module, idx: Tensor | None) -> nn.Module:
    """``m`` reading only inputs ``idx`` (``m`` itself when ``idx`` is None)."""
    if idx is None:
        return m
    keep = torch.zeros(tensor_attr(m, "weight").shape[1], dtype=torch.bool)
    keep[idx] = True
    return shrink("layer", m, {1: keep})


def _border(used: Tensor) -> tuple[int, int]:
    """``(first, stop)`` of the used positions of a 1-D bool mask."""
    where = used.nonzero().flatten()
    return int(where[0]), int(where[-1]) + 1


class Plain(LayerForm):
    """The layer unchanged: zeros stay inside its weight."""

    label = "plain"
    simplicity = 0

    def build(self, subject: nn.Module, ctx: FormContext) -> nn.Module | None:
        return subject


class SelectedInputs(LayerForm):
    """Only the inputs some weight reads, selected in front of a narrower layer."""

    label = "selected-inputs"
    simplicity = 1

    def build(self, subject: nn.Module, ctx: FormContext) -> nn.Module | None:
        if isinstance(subject, nn.Conv2d) and not _plain_conv(subject):
            return None
        idx = _selection(subject, ctx)
        return None if idx is None else _select_then(subject, idx, _narrowed(subject, idx))


class CroppedKernel(LayerForm):
    """A smaller kernel where border rows/columns are zero in every filter and input,
    over the kept input channels when selecting them pays too."""

    label = "cropped-kernel"
    simplicity = 2

    def build(self, subject: nn.Module, ctx: FormContext) -> nn.Module | None:
        if not _plain_conv(subject):
            return None
        taps = _column_use(subject, ctx).any(dim=0)  # (kh, kw): used by some filter and input
        if not taps.any():
            return None
        rows, cols = _border(taps.any(dim=1)), _border(taps.any(dim=0))
        if rows == (0, taps.shape[0]) and cols == (0, taps.shape[1]):
            return None
        idx = _selection(subject, ctx)
        narrowed = _narrowed(subject, idx)
        assert isinstance(narrowed, nn.Conv2d)  # a conv keeping some of its inputs stays a conv
        cropped = CroppedConv2d.from_conv(narrowed, rows, cols)
        return cropped if idx is None else _select_then(subject, idx, cropped)


class LoweredGemm(LayerForm):
    """im2col + GEMM over the kept columns, when some kept channel lost only some of its
    columns and at least ``lower_min_fraction`` of the columns are zero."""

    label = "lowered-gemm"
    simplicity = 3

    def build(self, subject: nn.Module, ctx: FormContext) -> nn.Module | None:
        if not _plain_conv(subject):
            return None
        w = subject.weight.detach()
        cols_used = _column_use(subject, ctx).reshape(-1)
        per_channel = cols_used.reshape(w.shape[1], -1)
        whole_channels_only = bool((per_channel.all(dim=1) | ~per_channel.any(dim=1)).all())
        if not cols_used.any() or whole_channels_only or (~cols_used).float().mean() < ctx.lower_min_fraction:
            return None
        return LoweredConv2d(subject, cols_used.nonzero().flatten()).train(subject.training)


for _form in (Plain(), SelectedInputs(), CroppedKernel(), LoweredGemm()):
    register_form(nn.Conv2d, _form)
for _form in (Plain(), SelectedInputs()):
    register_form(nn.Linear, _form)
