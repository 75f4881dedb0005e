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
    ``out x (C*kh*kw)`` weight; ``columns`` says which. Only those ``k`` rows of the
    im2col matrix are ever built: the zero-padded input is viewed (no copy) as its
    ``(N, C, kh, kw, OH, OW)`` sliding windows and the kept ``(channel, row, column)``
    triples are gathered from it in one pass, so neither the full ``(N, C*kh*kw, L)``
    unfold nor a second copy of its kept rows is made. The GEMM's inner dimension is
    ``k``: exactly the saving SSL's shape-wise sparsity promises.
    """

    def __init__(self, conv: nn.Conv2d, columns: Tensor) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("LoweredConv2d needs groups=1, zero padding and numeric padding")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = tuple(conv.kernel_size), tuple(conv.stride)
        self.padding, self.dilation = tuple(conv.padding), tuple(conv.dilation)
        flat = conv.weight.detach().reshape(conv.out_channels, -1)
        self.register_buffer("columns", columns.clone().long())
        self.weight = nn.Parameter(flat[:, self.columns].clone())  # (out, k)
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None
        # (channel, kernel row, kernel column) of each kept column: derived from ``columns``,
        # so not saved, and recomputed when a state dict brings other columns
        for name in ("_channel", "_row", "_col"):
            self.register_buffer(name, torch.zeros(0, dtype=torch.long), persistent=False)
        self._split_columns()
        self.register_load_state_dict_post_hook(_resplit_after_load)

    def _split_columns(self) -> None:
        kh, kw = self.kernel_size
        cols = self.columns
        self._channel, self._row, self._col = cols // (kh * kw), (cols // kw) % kh, cols % kw

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        n, c, h, w = x.shape
        oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        s_n, s_c, s_h, s_w = x.stride()
        windows = x.as_strided((n, c, kh, kw, oh, ow), (s_n, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw))
        cols = windows[:, self._channel, self._row, self._col]  # (N, k, OH, OW): the kept rows of im2col
        out = torch.matmul(self.weight, cols.reshape(n, -1, oh * ow))  # (N, out, L)
        if self.bias is not None:
            out = out + self.bias.unsqueeze(1)
        return out.reshape(n, self.out_channels, oh, ow)

    def extra_repr(self) -> str:
        full = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return (f"{self.in_channels}->{self.out_channels}, kernel={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, columns={self.columns.numel()}/{full}")


def _resplit_after_load(module: nn.Module, incompatible_keys: object) -> None:
    """Load hook of :class:`LoweredConv2d` (a plain function, so the module stays picklable)."""
    module._split_columns()
