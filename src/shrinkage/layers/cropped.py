"""A conv whose kernel lost border rows/columns that every filter has zero."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def crop_pads(size: int, padding: int, dilation: int, stride: int, full: int, kept: int, offset: int) -> tuple[int, int]:
    """``(before, after)`` padding (negative: cropping) that makes a ``kept``-tap kernel,
    whose first tap is tap ``offset`` of a ``full``-tap one, give the full kernel's output.

    Output ``o`` of the full kernel reads padded positions ``o*stride + i*dilation``; the
    taps before ``offset`` are zero, so the cropped kernel starts ``offset*dilation``
    further in: ``before = padding - offset*dilation``. ``after`` makes the padded length
    give exactly the full kernel's output count; any value in a window of ``stride``
    does, and the one equal to ``before`` (one symmetric padding, no separate pad) is
    preferred, then the one closest to zero.
    """
    outputs = (size + 2 * padding - dilation * (full - 1) - 1) // stride + 1
    before = padding - offset * dilation
    span = (outputs - 1) * stride + (kept - 1) * dilation + 1  # padded length the outputs read
    low = span - size - before
    high = low + stride - 1
    if low <= before <= high:
        return before, before
    return before, min(max(0, low), high)


class CroppedConv2d(nn.Module):
    """A ``Conv2d`` whose kernel was cut down to the rows/columns some filter uses.

    When the border rows or columns of a kernel are zero in every filter and every input
    channel (SSL filter shapes removed at the edges), a smaller kernel computes the same
    output: ``kernel_size`` is the kept block, ``offset`` its top-left tap in the original
    ``full_kernel_size``. The original padding, stride and dilation still define the
    output; the padding the smaller kernel needs is worked out per input size by
    :func:`crop_pads`: a symmetric crop (3x3 of a 5x5) keeps the conv's own padding,
    an asymmetric one pads (or crops) the input first.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        offset: tuple[int, int],
        full_kernel_size: tuple[int, int],
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.offset, self.full_kernel_size = tuple(offset), tuple(full_kernel_size)
        for k, o, full in zip(self.kernel_size, self.offset, self.full_kernel_size, strict=True):
            if k < 1 or o < 0 or o + k > full:
                raise ValueError(f"CroppedConv2d: a {self.kernel_size} block at {self.offset} is not inside "
                                 f"a {self.full_kernel_size} kernel")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rows: tuple[int, int], cols: tuple[int, int]) -> CroppedConv2d:
        """``conv`` keeping kernel rows ``rows[0]:rows[1]`` and columns ``cols[0]:cols[1]``
        (the others must be zero for the result to equal ``conv``)."""
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("CroppedConv2d needs groups=1, zero padding and numeric padding")
        w = conv.weight.detach()
        new = cls(conv.in_channels, conv.out_channels, (rows[1] - rows[0], cols[1] - cols[0]), conv.stride,
                  conv.padding, conv.dilation, (rows[0], cols[0]), conv.kernel_size, bias=conv.bias is not None)
        new = new.to(device=w.device, dtype=w.dtype)
        new.weight.data = w[:, :, rows[0] : rows[1], cols[0] : cols[1]].clone()
        if conv.bias is not None:
            new.bias.data = conv.bias.detach().clone()
        return new.train(conv.training)

    def pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` padding for an input of this size (negative: crop)."""
        top, bottom = crop_pads(height, self.padding[0], self.dilation[0], self.stride[0],
                                self.full_kernel_size[0], self.kernel_size[0], self.offset[0])
        left, right = crop_pads(width, self.padding[1], self.dilation[1], self.stride[1],
                                self.full_kernel_size[1], self.kernel_size[1], self.offset[1])
        return top, bottom, left, right

    def forward(self, x: Tensor) -> Tensor:
        top, bottom, left, right = self.pads(x.shape[-2], x.shape[-1])
        if top == bottom >= 0 and left == right >= 0:
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation)
        x = F.pad(x, (left, right, top, bottom))  # zeros, or a crop where negative
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}->{self.out_channels}, kernel={self.kernel_size} of {self.full_kernel_size} "
                f"at {self.offset}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.bias is not None}")
