"""The SSL group kinds: which slices of a selected module form the groups.

Each kind is a small frozen dataclass with ``build(name, module)``; configs name
them (``filters``, ``channels``, ...) and the CLI resolves the names to these
classes once, so the core never dispatches on strings.

For a ``Linear`` layer, filters are rows (output neurons) and channels are columns
(input neurons; on the first layer these are input pixels).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from shrinkage.errors import UnsupportedModuleError
from shrinkage.groups.base import AxisGrouping, ColumnGrouping, FlatGrouping, Grouping, SliceGrouping
from shrinkage.layers import head_layout

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _weight_of(kind: str, name: str, module: nn.Module) -> nn.Parameter:
    if not isinstance(module, _WEIGHTED):
        raise UnsupportedModuleError(
            f"module '{name}' ({type(module).__name__}) has no {kind} groups; they exist for Conv1d/2d/3d and Linear"
        )
    return cast(nn.Parameter, module.weight)  # torch types it Tensor; a layer's weight is a Parameter


def _is_transposed(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvTransposeNd)


class GroupKind(ABC):
    """Turns one selected module into the groupings a penalty acts on."""

    @abstractmethod
    def build(self, name: str, module: nn.Module) -> list[Grouping]:
        """Groupings of ``module`` (qualified name ``name``)."""

    def build_for(self, model: nn.Module, chosen: Sequence[tuple[str, nn.Module]]) -> list[Grouping]:
        """Groupings of every chosen module; kinds whose groups span layers override this."""
        return [g for name, module in chosen for g in self.build(name, module)]


@dataclass(frozen=True)
class Filters(GroupKind):
    """Output units: conv filters ``W[n]`` or Linear rows (neurons).

    ``include_bias`` adds ``bias[n]`` to group ``n``, so a zeroed filter also stops
    emitting a constant and can be removed even where the constant could not be
    folded into the next layer (a padded conv).
    """

    include_bias: bool = False

    def build(self, name: str, module: nn.Module) -> list[Grouping]:
        weight = _weight_of("filter", name, module)
        bias = getattr(module, "bias", None)
        if not self.include_bias or bias is None:
            return [AxisGrouping(name, weight, 0)]
        n = weight.shape[0]
        rows = torch.arange(n).unsqueeze(1)
        return [SliceGrouping(name, ((weight, 0, rows), (bias, 0, rows)))]


@dataclass(frozen=True)
class Channels(GroupKind):
    """Input units: conv input channels ``W[:, c]`` or Linear columns (input neurons)."""

    def build(self, name: str, module: nn.Module) -> list[Grouping]:
        weight = _weight_of("channel", name, module)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.groups != 1:
            raise UnsupportedModuleError(
                f"module '{name}': channel groups of a grouped conv (groups={module.groups}) "
                "are coupled across filters; select it with filter groups instead"
            )
        return [AxisGrouping(name, weight, 1)]


@dataclass(frozen=True)
class Shapes(GroupKind):
    """Filter shapes: the columns ``W[:, c, i, j]`` of the lowered (im2col) weight."""

    def build(self, name: str, module: nn.Module) -> list[Grouping]:
        if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise UnsupportedModuleError(
                f"module '{name}' ({type(module).__name__}) has no filter-shape groups; "
                "they exist for convolutions (use channel groups for Linear columns)"
            )
        return [ColumnGrouping(name, cast(nn.Parameter, module.weight))]


def is_shift(param_name: str) -> bool:
    """Whether a parameter only adds a constant (a layer's or a norm's ``bias``): with every
    multiplicative weight before it at zero, it leaves a constant compaction folds away."""
    return param_name.rpartition(".")[2].endswith("bias")


@dataclass(frozen=True)
class Depth(GroupKind):
    """The multiplicative parameters of a block (a layer or a residual branch) as one group.

    Shifts (biases, BatchNorm's beta) are left out unless ``include_shifts``: a zero
    branch then emits only its constant, which compaction folds when it removes the
    branch. Inside the group a shift the loss still uses keeps its gradient, so the
    group's norm would hover above the prox's threshold while the weights decay towards
    zero without reaching it: a branch compaction removes (its output is constant to
    float precision) that no zero-group count sees.
    """

    include_shifts: bool = False

    def build(self, name: str, module: nn.Module) -> list[Grouping]:
        params = tuple(
            p for n, p in module.named_parameters() if p.requires_grad and (self.include_shifts or not is_shift(n))
        )
        if not params:
            raise UnsupportedModuleError(f"module '{name}' has no trainable weights to form a depth group")
        return [FlatGrouping(name, params)]


@dataclass(frozen=True)
class Matrix(GroupKind):
    """The weight as one matrix ``out x (in*kh*kw)``, for the nuclear norm."""

    def build(self, name: str, module: nn.Module) -> list[Grouping]:
        weight = _weight_of("matrix", name, module)
        if _is_transposed(module):
            raise UnsupportedModuleError(f"module '{name}': transposed convolutions are not supported")
        return [AxisGrouping(name, weight, 0)]


@dataclass(frozen=True)
class Heads(GroupKind):
    """Attention heads: group ``h`` holds head ``h``'s query, key and value rows (with their
    biases) and its columns of the output projection, so q/k/v of a head vanish together
    and compaction removes the head (``nn.MultiheadAttention`` or ``HeadPrunedAttention``)."""

    def build(self, name: str, module: nn.Module) -> list[Grouping]:
        layout = head_layout(name, module)
        if layout.heads == 0:
            return []
        return [SliceGrouping(name, tuple((s.param, s.dim, s.index) for s in layout.slices))]
