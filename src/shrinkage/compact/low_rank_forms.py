"""The exact forms of a factorized layer: two thin layers, or their dense product.

A rank-``r`` factorization ``W ~ U_r S_r V_r^T`` of a Conv2d/Linear weight can run as

* :class:`TwoLayers`: a ``kh x kw`` conv (or linear) with ``r`` outputs, then a ``1x1``
  conv (linear) back to the full width: ``r * (in*kh*kw + out)`` MACs per position;
* :class:`DenseProduct`: one layer of the original shape whose weight is the product of
  the two factors: ``in*kh*kw * out`` MACs, but one large GEMM, which is often faster
  than two thin ones at a moderate rank. Equal to the pair up to float round-off.

The subject both forms rewrite is a :class:`LowRank`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TypedDict, cast

import torch
from torch import Tensor, nn

from shrinkage.compact.forms import FormContext, LayerForm, register_form
from shrinkage.compact.module_attrs import optional_tensor_attr, tensor_attr
from shrinkage.layers import uninitialized


@dataclass(frozen=True, eq=False)
class LowRank:
    """A Conv2d/Linear ``layer`` and its rank-``r`` factors: ``second @ first`` approximates
    the ``out x (in*kh*kw)`` weight; ``first`` is ``sqrt(S_r) V_r^T``, ``second`` is
    ``U_r sqrt(S_r)`` (splitting ``sqrt(S)`` over both keeps them equally scaled, which
    fine-tuning prefers over putting all of ``S`` on one side)."""

    layer: nn.Module
    first: Tensor  # (r, in*kh*kw)
    second: Tensor  # (out, r)

    @classmethod
    def of(cls, layer: nn.Module, rank: int) -> LowRank:
        """The factors of ``layer``'s weight at ``rank``, from its SVD (computed in float64)."""
        weight = tensor_attr(layer, "weight")
        w = weight.detach().reshape(weight.shape[0], -1).double()
        u, s, vh = (t.to(weight.dtype) for t in torch.linalg.svd(w, full_matrices=False))
        root = s[:rank].sqrt()
        return cls(layer, root.unsqueeze(1) * vh[:rank], u[:, :rank] * root)

    @property
    def rank(self) -> int:
        return self.first.shape[0]


class _Like(TypedDict):
    device: torch.device
    dtype: torch.dtype
    bias: bool


def _like(m: nn.Module, *, bias: bool) -> _Like:
    weight = tensor_attr(m, "weight")
    return {"device": weight.device, "dtype": weight.dtype, "bias": bias}


def _conv(m: nn.Module) -> nn.Conv2d:
    # a factorized layer that is no Linear is a Conv2d (see factorize.candidate_layers)
    return cast(nn.Conv2d, m)


class TwoLayers(LayerForm):
    """``project`` (``r`` outputs, the original kernel) then ``expand`` (``1x1``, with the bias)."""

    label = "two-layers"
    simplicity = 1

    def build(self, subject: LowRank, ctx: FormContext) -> nn.Module | None:
        m, r = subject.layer, subject.rank
        bias = optional_tensor_attr(m, "bias")
        first: nn.Linear | nn.Conv2d
        second: nn.Linear | nn.Conv2d
        if isinstance(m, nn.Linear):
            first = nn.Linear(m.in_features, r, **_like(m, bias=False))
            second = nn.Linear(r, m.out_features, **_like(m, bias=m.bias is not None))
        else:
            c = _conv(m)
            # torch types a Conv2d's kernel_size/stride/padding/dilation tuple[int, ...], its
            # constructor asks for pairs: they are the pairs it stored
            first = nn.Conv2d(c.in_channels, r, c.kernel_size, stride=c.stride, padding=c.padding,  # type: ignore[arg-type]
                              dilation=c.dilation, padding_mode=c.padding_mode, **_like(c, bias=False))  # type: ignore[arg-type]  # fmt: skip
            second = nn.Conv2d(r, c.out_channels, 1, **_like(c, bias=c.bias is not None))
        with torch.no_grad():
            first.weight.copy_(subject.first.reshape(first.weight.shape))
            second.weight.copy_(subject.second.reshape(second.weight.shape))
            if bias is not None:
                assert second.bias is not None  # built with a bias when the layer has one
                second.bias.copy_(bias)
        return nn.Sequential(OrderedDict(project=first, expand=second))


class DenseProduct(LayerForm):
    """One layer of the original shape with weight ``second @ first`` (as ``product``)."""

    label = "dense-product"
    simplicity = 0

    def build(self, subject: LowRank, ctx: FormContext) -> nn.Module | None:
        m = subject.layer
        bias = optional_tensor_attr(m, "bias")
        layer: nn.Linear | nn.Conv2d
        if isinstance(m, nn.Linear):
            layer = uninitialized(nn.Linear, m.in_features, m.out_features, **_like(m, bias=m.bias is not None))
        else:
            c = _conv(m)
            layer = uninitialized(nn.Conv2d, c.in_channels, c.out_channels, c.kernel_size, stride=c.stride,
                                  padding=c.padding, dilation=c.dilation, padding_mode=c.padding_mode,
                                  **_like(c, bias=c.bias is not None))  # fmt: skip
        with torch.no_grad():
            product = subject.second.double() @ subject.first.double()
            layer.weight.copy_(product.reshape(layer.weight.shape))
            if bias is not None:
                assert layer.bias is not None  # built with a bias when the layer has one
                layer.bias.copy_(bias)
        return nn.Sequential(OrderedDict(product=layer))


# the pair comes first: it is the reference every other form of a factorization must match
register_form(LowRank, TwoLayers())
register_form(LowRank, DenseProduct())
