"""Sparse group Lasso (Simon et al. 2013; used by Alvarez & Salzmann 2016/2017).

``R(W) = (1 - alpha) * sqrt(P) * sum_g ||w_g||_2 + alpha * ||W||_1`` with ``P`` the
group size: whole groups and single weights both become zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from shrinkage.errors import ConfigError
from shrinkage.penalties.base import Penalty, block_soft_threshold_, check_strength, soft_threshold_


@dataclass(frozen=True)
class SparseGroupLasso(Penalty):
    strength: float
    alpha: float = 0.5

    def __post_init__(self) -> None:
        check_strength("sparse_group_lasso", self.strength)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"sparse_group_lasso.alpha must be in [0, 1], got {self.alpha!r}")

    def value(self, matrix: Tensor) -> Tensor:
        group = math.sqrt(matrix.shape[1]) * matrix.norm(dim=1).sum()
        value: Tensor = self.strength * ((1 - self.alpha) * group + self.alpha * matrix.abs().sum())
        return value

    def prox_(self, matrix: Tensor, step: float) -> None:
        """Soft-threshold each weight by ``t*alpha``, then block soft-threshold each group by
        ``t*(1-alpha)*sqrt(P)``, ``t = step*strength``. This composition is the exact
        proximal map of the sum, because the L1 prox preserves each group's sign pattern.
        """
        t = step * self.strength
        soft_threshold_(matrix, t * self.alpha)
        block_soft_threshold_(matrix, t * (1 - self.alpha) * math.sqrt(matrix.shape[1]))

    def structure(self, matrix: Tensor) -> dict[str, float]:
        stats = super().structure(matrix)
        stats["zero_weights"] = (matrix == 0).float().mean().item()
        return stats
