"""Layers that compaction puts where a plain smaller layer cannot express the result."""

from __future__ import annotations

import warnings
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)


def uninitialized(cls: type[M], *args: object, **kwargs: object) -> M:
    """``cls(*args, **kwargs)`` without running its initializer: surgery overwrites every
    weight anyway, and a layer of width zero would only warn that there is nothing to fill."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        return nn.utils.skip_init(cls, *args, **kwargs)


class ZeroWidthConv(nn.Module):
    """A convolution left with no input channels or no output channels.

    PyTorch's conv kernels refuse a weight with a zero dimension, yet that is exactly
    what removing a whole residual branch produces (SSL's depth-wise sparsity): the
    branch's first conv keeps no filters and its last conv reads no channels. This layer
    computes the same result without a kernel: an empty ``(N, 0, ...)`` tensor in the
    first case, the bias broadcast over the output positions in the second. ``weight``
    keeps the zero-width shape so shape-reading code (and bias folding) still works.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, ...],
        stride: tuple[int, ...],
        padding: tuple[int, ...] | str,
        dilation: tuple[int, ...],
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if in_channels and out_channels:
            raise ValueError(f"ZeroWidthConv needs zero input or output channels, got {in_channels}->{out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = tuple(kernel_size), tuple(stride), tuple(dilation)
        self.padding = padding if isinstance(padding, str) else tuple(padding)
        self.groups, self.padding_mode = 1, padding_mode  # with nothing to group, groups is moot
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_channels)) if bias else None)

    def output_size(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if self.padding == "same":
            return spatial
        pads = (0,) * len(spatial) if self.padding == "valid" else self.padding
        return tuple(
            (s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, p, d, k, st in zip(spatial, pads, self.dilation, self.kernel_size, self.stride, strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        n, spatial = x.shape[0], self.output_size(tuple(x.shape[2:]))
        if self.bias is None or self.out_channels == 0:
            return x.new_zeros((n, self.out_channels, *spatial))
        shape = (1, self.out_channels) + (1,) * len(spatial)
        # a real tensor, not an expanded view: callers add into it in place (out += identity)
        return self.bias.to(x.dtype).view(shape).expand((n, self.out_channels, *spatial)).clone()

    def extra_repr(self) -> str:
        return f"{self.in_channels}->{self.out_channels}, kernel={self.kernel_size}, stride={self.stride}"


class SelectInputs(nn.Module):
    """Keeps only the used positions of ``dim`` before a layer (e.g. the input pixels an
    MLP's first layer still reads, or input channels of a conv fed by the image)."""

    def __init__(self, index: Tensor, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("index", index.clone().long())

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(self.dim, self.index)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kept={self.index.numel()}"


class LoweredConv2d(nn.Module):
    """A conv computed as im2col + GEMM over the kept columns only (SSL's filter shapes).

    ``weight`` is ``(out, k)`` with ``k`` the number of kept columns of the lowered
    ``out x (C*kh*kw)`` weight; ``columns`` says which. The unfolded input is
    ``(N, C*kh*kw, L)``; selecting ``k`` rows shrinks the GEMM's inner dimension, which is
    exactly the saving SSL's shape-wise sparsity promises.
    """

    def __init__(self, conv: nn.Conv2d, columns: Tensor) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("LoweredConv2d needs groups=1, zero padding and numeric padding")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        flat = conv.weight.detach().reshape(conv.out_channels, -1)
        self.register_buffer("columns", columns.clone().long())
        self.weight = nn.Parameter(flat[:, self.columns].clone())  # (out, k)
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C*kh*kw, L)
        cols = cols.index_select(1, self.columns)  # (N, k, L)
        out = torch.matmul(self.weight, cols)  # (N, out, L)
        if self.bias is not None:
            out = out + self.bias.unsqueeze(1)
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        return out.reshape(n, self.out_channels, oh, ow)

    def extra_repr(self) -> str:
        full = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return f"{self.in_channels}->{self.out_channels}, kernel={self.kernel_size}, columns={self.columns.numel()}/{full}"
