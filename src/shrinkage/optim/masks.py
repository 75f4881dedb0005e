"""Keep removed structures at zero while fine-tuning."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from shrinkage.optim.regularizer import Regularizer


class ZeroMask:
    """Records which weights of the regularized parameters are exactly zero and
    re-zeroes them after every optimizer step (momentum and weight decay would
    otherwise revive them).

    Only parameters of terms whose penalty induces zeros are masked: a low-rank term
    makes no zeros worth keeping.
    """

    def __init__(self, masks: dict[int, tuple[nn.Parameter, Tensor]]) -> None:
        self._masks = masks

    @classmethod
    @torch.no_grad()
    def capture(cls, regularizer: Regularizer) -> ZeroMask:
        masks: dict[int, tuple[nn.Parameter, Tensor]] = {}
        for term in regularizer.terms:
            if term.penalty.induces_zeros:
                for p in term.grouping.parameters:
                    masks.setdefault(id(p), (p, p != 0))
        return cls(masks)

    @torch.no_grad()
    def apply_(self) -> None:
        for p, keep in self._masks.values():
            p.mul_(keep)

    @property
    def zero_count(self) -> int:
        return sum(int((~keep).sum()) for _, keep in self._masks.values())
