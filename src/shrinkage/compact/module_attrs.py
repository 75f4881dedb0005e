"""Typed reads of layer attributes.

``nn.Module.__getattr__`` types every attribute a class does not declare itself as
``Tensor | Module``. Compaction often knows a layer by its layer type (any class
registered for convolutions, say), not by its Python class: these readers state what the
attribute holds there. They read the attribute as plain attribute access does.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn


def tensor_attr(m: nn.Module, name: str) -> Tensor:
    """``m.<name>``, a parameter or buffer of ``m`` (``weight``)."""
    value: Tensor = getattr(m, name)
    return value


def optional_tensor_attr(m: nn.Module, name: str) -> Tensor | None:
    """``m.<name>``, a parameter or buffer that may be None (``bias``)."""
    value: Tensor | None = getattr(m, name)
    return value


def int_attr(m: nn.Module, name: str) -> int:
    """``m.<name>``, an int hyperparameter (``out_channels``, ``groups``)."""
    value: int = getattr(m, name)
    return value


def number_attr(m: nn.Module, name: str) -> int:
    """``int(m.<name>)``: a count a third-party module keeps (``num_heads``, ``head_dim``)."""
    return int(getattr(m, name))


def set_int_attr(m: nn.Module, name: str, value: int) -> None:
    """``m.<name> = value`` for a plain int attribute (a head count)."""
    setattr(m, name, value)


class ConvLike(Protocol):
    """What compaction reads of a convolution: ``nn.Conv1d/2d/3d``, ``ZeroWidthConv`` and
    their subclasses (the types the conv layer type is registered for)."""

    in_channels: int
    out_channels: int
    groups: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: str | tuple[int, ...]
    dilation: tuple[int, ...]
    padding_mode: str
    weight: Tensor
    bias: Tensor | None
