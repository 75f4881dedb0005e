"""Group Lasso: ``R(W) = sum_g c_g ||w_g||_2`` with unsquared norms.

A squared norm would be plain weight decay and never make a group exactly zero; the
unsquared norm is non-differentiable at zero, which is what produces exact zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from shrinkage.penalties.base import Penalty, block_soft_threshold_, check_strength


@dataclass(frozen=True)
class GroupLasso(Penalty):
    """``strength * sum_g c ||w_g||`` with ``c = sqrt(group_size)`` if ``scale_by_size`` else 1."""

    strength: float
    scale_by_size: bool = False

    def __post_init__(self) -> None:
        check_strength("group_lasso", self.strength)

    def _weight(self, matrix: Tensor) -> float:
        return math.sqrt(matrix.shape[1]) if self.scale_by_size else 1.0

    def value(self, matrix: Tensor) -> Tensor:
        return self.strength * self._weight(matrix) * matrix.norm(dim=1).sum()

    def prox_(self, matrix: Tensor, step: float) -> None:
        """Block soft-thresholding: ``w_g <- max(1 - t/||w_g||, 0) w_g``, ``t = step*strength*c``."""
        block_soft_threshold_(matrix, step * self.strength * self._weight(matrix))
