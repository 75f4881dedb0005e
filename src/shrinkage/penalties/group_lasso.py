"""Group Lasso: ``R(W) = sum_g c_g ||w_g||_2`` with unsquared norms.

A squared norm would be plain weight decay and never make a group exactly zero; the
unsquared norm is non-differentiable at zero, which is what produces exact zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from shrinkage.penalties.base import Penalty, block_soft_threshold_, check_strength

if TYPE_CHECKING:
    from shrinkage.groups.base import Grouping


@dataclass(frozen=True)
class GroupLasso(Penalty):
    """``strength * sum_g c ||w_g||`` with ``c = sqrt(group_size)`` if ``scale_by_size`` else 1."""

    strength: float
    scale_by_size: bool = False

    def __post_init__(self) -> None:
        check_strength("group_lasso", self.strength)

    def _weight(self, matrix: Tensor) -> float:
        return self._weight_of(matrix.shape[1])

    def _weight_of(self, group_size: int) -> float:
        return math.sqrt(group_size) if self.scale_by_size else 1.0

    def value(self, matrix: Tensor, group_weights: Tensor | None = None) -> Tensor:
        """The penalty; ``group_weights`` (one per group) multiply each group's norm."""
        norms = matrix.norm(dim=1)
        if group_weights is not None:
            norms = norms * group_weights.to(norms.device, norms.dtype)
        value: Tensor = self.strength * self._weight(matrix) * norms.sum()
        return value

    def prox_(self, matrix: Tensor, step: float, group_weights: Tensor | None = None) -> None:
        """Block soft-thresholding: ``w_g <- max(1 - t_g/||w_g||, 0) w_g``, ``t_g = step*strength*c*a_g``
        with ``a_g`` the group's weight (1 without ``group_weights``; 0: the group is left alone)."""
        block_soft_threshold_(matrix, self._threshold(step, matrix.shape[1], group_weights))

    def _threshold(self, step: float, group_size: int, group_weights: Tensor | None) -> float | Tensor:
        t = step * self.strength * self._weight_of(group_size)
        return t if group_weights is None else t * group_weights

    @torch.no_grad()
    def prox_grouping_(self, grouping: Grouping, step: float, group_weights: Tensor | None = None) -> None:
        """:meth:`prox_` on ``grouping``'s matrix, written back into its parameters.

        The map multiplies each row by a factor of its norm alone, so where the grouping
        computes row norms and scales rows in place (coupled slices: building their matrix
        and writing it back is most of the cost) the matrix is never built. The factors are
        those of :func:`block_soft_threshold_`; only the norms' summation order differs.
        """
        if not grouping.scales_rows_in_place:
            matrix = grouping.gather()
            self.prox_(matrix, step, group_weights)
            grouping.scatter_(matrix)
            return
        norms = grouping.row_norms()
        t = self._threshold(step, grouping.shape[1], group_weights)
        if isinstance(t, Tensor):
            t = t.to(norms.device, norms.dtype)
        grouping.scale_rows_(_shrink_factors(norms, t))


def _shrink_factors(norms: Tensor, t: float | Tensor) -> Tensor:
    """``max(1 - t/norm, 0)`` per group, computed exactly as :func:`block_soft_threshold_` does:
    zero-norm groups get a finite factor and groups with ``norm <= t`` exactly 0."""
    norms = norms.clamp_min(torch.finfo(norms.dtype).tiny)
    return torch.clamp((norms - t) / norms, min=0)
