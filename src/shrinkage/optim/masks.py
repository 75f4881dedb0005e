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

    @classmethod
    def for_names(cls, model: nn.Module, keep: dict[str, Tensor]) -> ZeroMask:
        """Holds ``model``'s parameters named in ``keep`` at zero where their entry is False
        (``keep`` from :meth:`keep_by_name` of a copy of ``model``, or saved with a checkpoint)."""
        params = dict(model.named_parameters())
        unknown = sorted(set(keep) - set(params))
        if unknown:
            raise KeyError(f"ZeroMask: {type(model).__name__} has no parameter {unknown[0]!r}")
        masks: dict[int, tuple[nn.Parameter, Tensor]] = {}
        for name, k in keep.items():
            p = params[name]
            if k.shape != p.shape:
                raise ValueError(f"ZeroMask: mask of {name!r} has shape {tuple(k.shape)}, "
                                 f"the parameter {tuple(p.shape)}")  # fmt: skip
            masks[id(p)] = (p, k.to(device=p.device, dtype=torch.bool))
        return cls(masks)

    def keep_by_name(self, model: nn.Module) -> dict[str, Tensor]:
        """The masks by the names their parameters have in ``model`` (those it holds)."""
        return {name: self._masks[id(p)][1] for name, p in model.named_parameters() if id(p) in self._masks}

    def names(self, model: nn.Module) -> list[str]:
        """Names in ``model`` of the masked parameters."""
        return list(self.keep_by_name(model))

    @property
    def zero_count(self) -> int:
        return sum(int((~keep).sum()) for _, keep in self._masks.values())
