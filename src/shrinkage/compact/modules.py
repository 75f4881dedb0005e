"""Small modules that compaction inserts where a plain smaller layer cannot express the result."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
