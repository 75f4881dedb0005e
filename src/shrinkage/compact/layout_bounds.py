"""How large a layer rebuilt from a saved layout may be: bounded by the base model's layer.

Compaction only ever shrinks: a layer rebuilt at a name of the base model (its *origin*)
has no more channels, features, heads or kernel taps than the base layer there. Layers
made inside a replacement (the ``project`` / ``expand`` pair of a factorized layer, the
``select`` in front of a narrowed one, an attention's projections) derive from the
nearest base layer above them; a factorization's rank can exceed the base layer's input
width (a 1-input 5x5 conv reaches rank 25), so their input limit is widened to the
largest rank possible. Every limit is read from the base model before anything is built,
so a layout asking for 10**12 channels is refused without allocating.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from shrinkage.layers import CroppedConv2d, HeadPrunedAttention, LoweredConv2d, ZeroWidthConv

#: base layer types whose channels, kernel and padding bound a conv rebuilt there
CONV_LIKE = (_ConvNd, ZeroWidthConv, CroppedConv2d, LoweredConv2d)


@dataclass(frozen=True)
class Limits:
    """The largest sizes a layer standing in for one base layer may have."""

    inputs: int = 0
    outputs: int = 0
    kernel: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    groups: int = 1
    heads: int = 0
    head_dim: int = 0


@dataclass(frozen=True)
class Bound:
    """``value`` of the layout's ``field`` may be at most ``limit`` (with ``exact``: must equal it)."""

    field: str
    value: int
    limit: int
    exact: bool = False

    @property
    def broken(self) -> bool:
        return self.value != self.limit if self.exact else self.value > self.limit


def _conv_limits(m: _ConvNd | ZeroWidthConv | CroppedConv2d | LoweredConv2d, derived: bool) -> Limits:
    kernel = tuple(getattr(m, "full_kernel_size", m.kernel_size))
    dilation = tuple(m.dilation)
    if isinstance(m.padding, str):  # "same" pads at most dilation * (kernel - 1) per side; "valid" none
        padding = tuple(d * (k - 1) for d, k in zip(dilation, kernel, strict=True))
    else:
        padding = tuple(m.padding)
    inputs = m.in_channels
    if derived:  # a factorization's rank is at most min(outputs, inputs * kernel taps)
        inputs = max(inputs, min(m.out_channels, m.in_channels * math.prod(kernel)))
    return Limits(inputs, m.out_channels, kernel, padding, getattr(m, "groups", 1))


def _attention_limits(m: nn.MultiheadAttention | HeadPrunedAttention) -> Limits:
    heads = m.original_heads if isinstance(m, HeadPrunedAttention) else m.num_heads
    width = max(m.embed_dim, m.kdim, m.vdim, heads * m.head_dim)
    return Limits(width, width, heads=heads, head_dim=m.head_dim)


def limits_of(origin: nn.Module, derived: bool) -> Limits:
    """Limits of a layer rebuilt at the base layer ``origin`` (``derived``: inside its replacement)."""
    if isinstance(origin, CONV_LIKE):
        return _conv_limits(origin, derived)
    if isinstance(origin, nn.Linear):
        return Limits(origin.in_features, origin.out_features)
    if isinstance(origin, _BatchNorm):
        return Limits(origin.num_features, origin.num_features)
    if isinstance(origin, nn.PReLU):
        return Limits(origin.num_parameters, origin.num_parameters)
    if isinstance(origin, nn.MultiheadAttention | HeadPrunedAttention):
        return _attention_limits(origin)
    from shrinkage.compact.layer_types import WeightUse, canonical_param, layer_type_of

    layer_type = layer_type_of(origin)
    if layer_type is not None and layer_type.weight_use is WeightUse.MATMUL:  # an (in, out) matrix
        outputs, inputs = canonical_param(origin, "weight").shape
        return Limits(int(inputs), int(outputs))
    return Limits()  # containers: nothing sized may stand in for them


def within(field: str, values: list[int], limits: tuple[int, ...]) -> Iterator[Bound]:
    """Element-wise bounds of a per-dimension field (``kernel_size[0]`` ...), its length exact."""
    yield Bound(f"len({field})", len(values), len(limits), exact=True)
    for i, (value, limit) in enumerate(zip(values, limits, strict=False)):
        yield Bound(f"{field}[{i}]", value, limit)
