"""Layers that compacted models are built from, beyond PyTorch's own.

They depend on nothing else in the package, so the graph rules, the surgery and the
saved-model layouts can all refer to them.
"""

from shrinkage.layers.attention import HeadLayout, HeadPrunedAttention, HeadSlice, head_layout, removable_heads
from shrinkage.layers.compacted import LoweredConv2d, SelectInputs, ZeroWidthConv, uninitialized
from shrinkage.layers.cropped import CroppedConv2d
from shrinkage.layers.sparse import SparseConv2d, SparseLinear

__all__ = [
    "CroppedConv2d",
    "HeadLayout",
    "HeadPrunedAttention",
    "HeadSlice",
    "LoweredConv2d",
    "SelectInputs",
    "SparseConv2d",
    "SparseLinear",
    "ZeroWidthConv",
    "head_layout",
    "removable_heads",
    "uninitialized",
]
