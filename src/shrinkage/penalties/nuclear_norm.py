"""Nuclear norm ``||W||_* = sum_i sigma_i(W)``: the convex surrogate of rank."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from shrinkage.penalties.base import Penalty, check_strength


@dataclass(frozen=True)
class NuclearNorm(Penalty):
    """Acts on the whole matrix (a conv weight lowered to ``out x in*kh*kw``)."""

    strength: float
    #: singular values below this fraction of the largest count as zero in the logged rank
    rank_tolerance: float = 1e-6
    induces_zeros: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_strength("nuclear_norm", self.strength)

    def value(self, matrix: Tensor) -> Tensor:
        return self.strength * torch.linalg.svdvals(matrix).sum()

    def prox_(self, matrix: Tensor, step: float) -> None:
        """Singular value thresholding: ``W <- U diag(max(sigma - t, 0)) V^T``, ``t = step*strength``."""
        t = step * self.strength
        if t == 0:
            return  # identity; the SVD round trip would perturb every weight by rounding error
        # the exact map keeps zero rows/columns zero; the SVD round trip would revive them
        zero_rows = matrix.abs().amax(dim=1) == 0
        zero_cols = matrix.abs().amax(dim=0) == 0
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        s = torch.clamp(s - t, min=0)
        out = (u * s) @ vh
        out[zero_rows] = 0
        out[:, zero_cols] = 0
        matrix.copy_(out)

    def structure(self, matrix: Tensor) -> dict[str, float]:
        with torch.no_grad():
            s = torch.linalg.svdvals(matrix)
            top = s.max().item() if s.numel() else 0.0
            rank = int((s > self.rank_tolerance * top).sum().item()) if top > 0 else 0
        return {"rank": float(rank), "rank_fraction": rank / max(1, min(matrix.shape))}
