"""Low-rank factorization by energy threshold (Alvarez & Salzmann 2017, post-processing).

Each Conv2d / Linear weight, seen as the matrix ``W = U S V^T`` of shape
``out x (in*kh*kw)``, keeps the smallest rank ``r`` whose singular values hold a
fraction ``energy`` of ``sum sigma_i^2`` and becomes two thinner layers:

* conv: a ``kh x kw`` conv with ``r`` filters (``sqrt(S_r) V_r^T``) then a ``1x1`` conv
  (``U_r sqrt(S_r)``) carrying the bias;
* linear: ``in -> r`` then ``r -> out``.

By Eckart-Young the weight error is ``sqrt(sum_{i>r} sigma_i^2)``, the smallest any
rank-r matrix can achieve. Splitting ``sqrt(S)`` over both factors keeps them equally
scaled, which fine-tuning prefers over putting all of ``S`` on one side.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from shrinkage.compact.surgery import set_submodule
from shrinkage.errors import ConfigError

log = logging.getLogger(__name__)


def check_energy(energy: float, key: str = "energy") -> None:
    if not isinstance(energy, (int, float)) or not (0.0 < energy <= 1.0) or math.isnan(energy):
        raise ConfigError(f"{key} must be in (0, 1], got {energy!r}")


def rank_for_energy(singular_values: Tensor, energy: float) -> int:
    """Smallest ``r`` with ``sum_{i<r} s_i^2 >= energy * sum s_i^2`` (0 for a zero matrix)."""
    sq = singular_values.double() ** 2
    total = float(sq.sum())
    if total == 0.0:
        return 0
    cum = torch.cumsum(sq, 0) / total
    # tolerance: at energy 1.0 rounding must not push r past the last non-zero value
    return int((cum < energy - 1e-12).sum().item()) + 1


@dataclass(frozen=True)
class LayerFactorization:
    name: str
    rank: int
    full_rank: int
    macs_before: int  # per output position
    macs_after: int
    replaced: bool


def _factor_conv(m: nn.Conv2d, r: int, u: Tensor, s: Tensor, vh: Tensor) -> nn.Module:
    root = s[:r].sqrt()
    first = nn.Conv2d(
        m.in_channels, r, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
        bias=False, padding_mode=m.padding_mode, device=m.weight.device, dtype=m.weight.dtype,
    )  # fmt: skip
    second = nn.Conv2d(r, m.out_channels, 1, bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        first.weight.copy_((root.unsqueeze(1) * vh[:r]).reshape(first.weight.shape))
        second.weight.copy_((u[:, :r] * root).reshape(second.weight.shape))
        if m.bias is not None:
            second.bias.copy_(m.bias)
    return nn.Sequential(OrderedDict(project=first, expand=second))


def _factor_linear(m: nn.Linear, r: int, u: Tensor, s: Tensor, vh: Tensor) -> nn.Module:
    root = s[:r].sqrt()
    first = nn.Linear(m.in_features, r, bias=False, device=m.weight.device, dtype=m.weight.dtype)
    second = nn.Linear(r, m.out_features, bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        first.weight.copy_(root.unsqueeze(1) * vh[:r])
        second.weight.copy_(u[:, :r] * root)
        if m.bias is not None:
            second.bias.copy_(m.bias)
    return nn.Sequential(OrderedDict(project=first, expand=second))


def plan_factorization(
    model: nn.Module,
    energy: float | Mapping[str, float] = 0.9,
    *,
    only_if_cheaper: bool = True,
    layers: Sequence[str] | None = None,
) -> list[LayerFactorization]:
    """The rank each Conv2d/Linear would get, and whether replacing it lowers MACs.

    ``layers``: name globs of the layers to consider (default: all); a pattern also
    matches the layers inside a module of that name (``fc1`` matches ``fc1.layer``).
    """
    rows = []
    # nn.MultiheadAttention reads out_proj.weight itself instead of calling out_proj, so a
    # pair of layers there would never run (HeadPrunedAttention calls its projections)
    read_directly = {
        f"{name}.{child}" for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
        for child, _ in m.named_children()
    }  # fmt: skip
    for name, m in model.named_modules():
        if not _factorable(m) or not _selected(name, layers) or name in read_directly:
            continue
        e = energy.get(name, 1.0) if isinstance(energy, Mapping) else energy
        check_energy(e, f"energy[{name}]" if isinstance(energy, Mapping) else "energy")
        w = m.weight.detach().reshape(m.weight.shape[0], -1)
        out_dim, in_dim = w.shape
        r = max(1, rank_for_energy(torch.linalg.svdvals(w.double()), e))
        before, after = out_dim * in_dim, r * (in_dim + out_dim)
        rows.append(LayerFactorization(name, r, min(w.shape), before, after, after < before or not only_if_cheaper))
    return rows


def _selected(name: str, layers: Sequence[str] | None) -> bool:
    if layers is None:
        return True
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in layers)


def _factorable(m: nn.Module) -> bool:
    layer = isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
    return layer and m.weight.numel() > 0  # a removed branch's zero-width layer has nothing to factor


def factorize(
    model: nn.Module,
    energy: float | Mapping[str, float] = 0.9,
    *,
    only_if_cheaper: bool = True,
    layers: Sequence[str] | None = None,
) -> nn.Module:
    """Return a copy of ``model`` with Conv2d/Linear layers replaced by low-rank pairs.

    ``energy`` is one fraction for all layers or a mapping from layer name to fraction
    (unlisted layers keep full energy). A layer is replaced only where the pair costs
    fewer multiply-accumulates than the original, unless ``only_if_cheaper=False``.
    ``layers`` restricts factorization to layers matching these name globs: typically the
    layers trained with a nuclear norm (truncating an unregularized classifier to rank 8
    of 10 costs far more accuracy than it saves).
    """
    if not isinstance(energy, Mapping):
        check_energy(energy)
    new = copy.deepcopy(model)
    for row in plan_factorization(model, energy, only_if_cheaper=only_if_cheaper, layers=layers):
        if not row.replaced:
            continue
        m = new.get_submodule(row.name)
        w = m.weight.detach().reshape(m.weight.shape[0], -1).double()
        u, s, vh = (t.to(m.weight.dtype) for t in torch.linalg.svd(w, full_matrices=False))
        pair = _factor_linear(m, row.rank, u, s, vh) if isinstance(m, nn.Linear) else _factor_conv(m, row.rank, u, s, vh)
        set_submodule(new, row.name, pair.train(m.training))
        log.info("factorized %s: rank %d of %d", row.name, row.rank, row.full_rank)
    return new
