"""Layers that compacted models are built from, beyond PyTorch's own.

They depend on nothing else in the package, so the graph rules, the surgery and the
saved-model layouts can all refer to them.
"""

from shrinkage.layers.attention import HeadLayout, HeadPrunedAttention, HeadSlice, head_layout, removable_heads
from shrinkage.layers.compacted import LoweredConv2d, SelectInputs, ZeroWidthConv, uninitialized
from shrinkage.layers.cropped import CroppedConv2d

__all__ = [
    "CroppedConv2d",
    "HeadLayout",
    "HeadPrunedAttention",
    "HeadSlice",
    "LoweredConv2d",
    "SelectInputs",
    "ZeroWidthConv",
    "head_layout",
    "removable_heads",
    "uninitialized",
]
