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

    def value(self, matrix: Tensor) -> Tensor:
        value: Tensor = self.strength * self._weight(matrix) * matrix.norm(dim=1).sum()
        return value

    def prox_(self, matrix: Tensor, step: float) -> None:
        """Block soft-thresholding: ``w_g <- max(1 - t/||w_g||, 0) w_g``, ``t = step*strength*c``."""
        block_soft_threshold_(matrix, step * self.strength * self._weight(matrix))

    @torch.no_grad()
    def prox_grouping_(self, grouping: Grouping, step: float) -> None:
        """:meth:`prox_` on ``grouping``'s matrix, written back into its parameters.

        The map multiplies each row by a factor of its norm alone, so where the grouping
        computes row norms and scales rows in place (coupled slices: building their matrix
        and writing it back is most of the cost) the matrix is never built. The factors are
        those of :func:`block_soft_threshold_`; only the norms' summation order differs.
        """
        if not grouping.scales_rows_in_place:
            matrix = grouping.gather()
            self.prox_(matrix, step)
            grouping.scatter_(matrix)
            return
        t = step * self.strength * self._weight_of(grouping.shape[1])
        grouping.scale_rows_(_shrink_factors(grouping.row_norms(), t))


def _shrink_factors(norms: Tensor, t: float) -> Tensor:
    """``max(1 - t/norm, 0)`` per group, computed exactly as :func:`block_soft_threshold_` does:
    zero-norm groups get a finite factor and groups with ``norm <= t`` exactly 0."""
    norms = norms.clamp_min(torch.finfo(norms.dtype).tiny)
    return torch.clamp((norms - t) / norms, min=0)
