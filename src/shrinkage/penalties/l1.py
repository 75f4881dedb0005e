"""Elementwise L1: ``R(W) = sum |w|``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from shrinkage.penalties.base import Penalty, check_strength, soft_threshold_


@dataclass(frozen=True)
class L1(Penalty):
    strength: float

    def __post_init__(self) -> None:
        check_strength("l1", self.strength)

    def value(self, matrix: Tensor) -> Tensor:
        return self.strength * matrix.abs().sum()

    def prox_(self, matrix: Tensor, step: float) -> None:
        """Soft-thresholding: ``w <- sign(w) * max(|w| - t, 0)`` with ``t = step * strength``."""
        soft_threshold_(matrix, step * self.strength)

    def structure(self, matrix: Tensor) -> dict[str, float]:
        stats = super().structure(matrix)
        stats["zero_weights"] = (matrix == 0).float().mean().item()
        return stats
