"""The fixed table of module type names a config may select by.

Configs name torch classes (``Conv2d``); this table turns the names into the classes
once, so no ``getattr(nn, name)`` on user input ever runs (which would also accept
``Module`` or any attribute of ``torch.nn``).
"""

from __future__ import annotations

from torch import nn

from shrinkage.layers import HeadPrunedAttention

MODULE_TYPES: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.Linear,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.Embedding,
        nn.MultiheadAttention,
        HeadPrunedAttention,
        nn.Sequential,
    )
}
