"""Low-rank factorization by energy threshold (Alvarez & Salzmann 2017, post-processing).

Each Conv2d / Linear weight, seen as the matrix ``W = U S V^T`` of shape
``out x (in*kh*kw)``, keeps the smallest rank ``r`` whose singular values hold a
fraction ``energy`` of ``sum sigma_i^2`` and becomes two thinner layers:

* conv: a ``kh x kw`` conv with ``r`` filters (``sqrt(S_r) V_r^T``) then a ``1x1`` conv
  (``U_r sqrt(S_r)``) carrying the bias;
* linear: ``in -> r`` then ``r -> out``;

or, where that runs faster on the layer's input (given ``example_inputs``), one layer
whose weight is the product of the two (see :mod:`shrinkage.compact.low_rank_forms`).
By Eckart-Young the weight error is ``sqrt(sum_{i>r} sigma_i^2)``, the smallest any
rank-r matrix can achieve.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from shrinkage.compact.choice import FormPolicy, default_policy
from shrinkage.compact.forms import FormContext, choose_form, forms_for, mark
from shrinkage.compact.low_rank_forms import LowRank
from shrinkage.compact.module_attrs import tensor_attr
from shrinkage.compact.surgery import set_submodule
from shrinkage.errors import ConfigError

if TYPE_CHECKING:
    from shrinkage.budget.ranks import RankCriterion
    from shrinkage.budget.spec import Budget

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


def _read_directly(model: nn.Module) -> set[str]:
    # nn.MultiheadAttention reads out_proj.weight itself instead of calling out_proj, so a
    # pair of layers there would never run (HeadPrunedAttention calls its projections)
    return {
        f"{name}.{child}" for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
        for child, _ in m.named_children()
    }  # fmt: skip


def candidate_layers(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """The Conv2d/Linear layers factorization may replace, by name; a ``layers`` pattern
    that matches none of them is an error naming it (a typo would otherwise do nothing)."""
    read_directly = _read_directly(model)
    found = {
        name: m for name, m in model.named_modules()
        if _factorable(m) and _selected(name, layers) and name not in read_directly
    }  # fmt: skip
    for pattern in layers or ():
        if not any(_selected(name, [pattern]) for name in found):
            raise ConfigError(f"factorize: layers pattern {pattern!r} matches no factorable Conv2d/Linear layer")
    return found


def _check_energy_names(energy: Mapping[str, float], found: Mapping[str, nn.Module]) -> None:
    for name in energy:
        if name not in found:
            close = ", ".join(sorted(found)[:8])
            raise ConfigError(f"factorize: energy[{name!r}] names no factorable layer (known: {close})")


def plan_factorization(
    model: nn.Module,
    energy: float | Mapping[str, float] = 0.9,
    *,
    only_if_cheaper: bool = True,
    layers: Sequence[str] | None = None,
) -> list[LayerFactorization]:
    """The rank each Conv2d/Linear would get, and whether replacing it lowers MACs.

    ``energy``: the fraction of the squared singular values (``sum sigma_i^2``, the
    squared Frobenius norm) each layer keeps. ``layers``: name globs of the layers to
    consider (default: all); a pattern also matches the layers inside a module of that
    name (``fc1`` matches ``fc1.layer``).
    """
    rows = []
    found = candidate_layers(model, layers)
    if isinstance(energy, Mapping):
        _check_energy_names(energy, found)
    for name, m in found.items():
        e = energy.get(name, 1.0) if isinstance(energy, Mapping) else energy
        check_energy(e, f"energy[{name}]" if isinstance(energy, Mapping) else "energy")
        weight = tensor_attr(m, "weight")
        w = weight.detach().reshape(weight.shape[0], -1)
        r = max(1, rank_for_energy(torch.linalg.svdvals(w.double()), e))
        rows.append(_row(name, w.shape, r, only_if_cheaper))
    return rows


def _row(name: str, shape: torch.Size, r: int, only_if_cheaper: bool) -> LayerFactorization:
    out_dim, in_dim = shape
    before, after = out_dim * in_dim, r * (in_dim + out_dim)
    return LayerFactorization(name, r, min(shape), before, after, after < before or not only_if_cheaper)


def _selected(name: str, layers: Sequence[str] | None) -> bool:
    if layers is None:
        return True
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in layers)


def _factorable(m: nn.Module) -> bool:
    layer = isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
    return layer and tensor_attr(m, "weight").numel() > 0  # a removed branch's zero-width layer has nothing to factor


def factorize(
    model: nn.Module,
    energy: float | Mapping[str, float] | None = None,
    *,
    budget: Budget | None = None,
    example_inputs: tuple[Any, ...] | Tensor | None = None,
    only_if_cheaper: bool = True,
    layers: Sequence[str] | None = None,
    min_rank: int = 1,
    min_energy: float | None = None,
    choose_by: FormPolicy | None = None,
    criterion: RankCriterion | None = None,
) -> nn.Module:
    """Return a copy of ``model`` with Conv2d/Linear layers replaced by low-rank pairs.

    Either ``energy`` (default 0.9): one fraction of the squared singular values kept by
    every layer, or a mapping from layer name to fraction (unlisted layers keep full
    energy); or ``budget`` (:class:`shrinkage.Budget`): ranks chosen globally so that the
    factorized model meets it with the least damage by ``criterion`` (default
    ``RankCriterion.LOG_KEPT``: the product of the shares of energy the layers keep is
    maximized; see :mod:`shrinkage.budget.ranks`; MAC and latency budgets need ``example_inputs``).
    ``min_rank`` / ``min_energy`` are per-layer floors under a budget. A layer is replaced
    only where the pair costs fewer MACs than the original, unless
    ``only_if_cheaper=False`` (energy mode). ``layers`` restricts factorization to layers
    matching these name globs: typically the layers trained with a nuclear norm
    (truncating an unregularized classifier to rank 8 of 10 costs far more accuracy than
    it saves).

    Energy mode with ``example_inputs``: each replaced layer becomes the pair or, if
    ``choose_by`` (default: the process default policy, measured) prefers it on the
    layer's input, one layer holding the pair's dense product (same output up to float
    round-off); the layer records the choice (``form_choices``). Without example inputs,
    with ``only_if_cheaper=False`` (the pair was asked for) and under a budget (whose
    accounting counts the pair), layers become pairs.
    """
    if choose_by is not None and not isinstance(choose_by, FormPolicy):
        raise ConfigError(f"factorize: choose_by must be Measured(), ByMacs() or None, got {choose_by!r}")
    if criterion is not None and budget is None:
        raise ConfigError("factorize: criterion chooses ranks under a budget; give budget too")
    if budget is not None:
        if energy is not None:
            raise ConfigError("factorize: give either energy or budget, not both")
        from shrinkage.budget.factorize import ranks_under_budget  # budget builds on this module
        from shrinkage.budget.ranks import RankCriterion

        ranks = ranks_under_budget(model, budget, example_inputs, layers, min_rank, min_energy,
                                   criterion or RankCriterion.LOG_KEPT)  # fmt: skip
        return build_factorized(model, ranks)
    energy = 0.9 if energy is None else energy
    if not isinstance(energy, Mapping):
        check_energy(energy)
    rows = plan_factorization(model, energy, only_if_cheaper=only_if_cheaper, layers=layers)
    ranks = {row.name: row.rank for row in rows if row.replaced}
    return build_factorized(model, ranks, example_inputs=example_inputs if only_if_cheaper else None,
                            choose_by=choose_by)  # fmt: skip


def _layer_inputs(model: nn.Module, names: Sequence[str], example_inputs: tuple[Any, ...]) -> dict[str, Tensor]:
    """The input each named layer reads on ``example_inputs`` (eval mode, flags restored);
    a layer called other than exactly once is left out (which call would its form serve?)."""
    seen: dict[str, list[Any]] = {name: [] for name in names}
    handles = [
        model.get_submodule(name).register_forward_pre_hook(lambda _m, args, name=name: seen[name].append(args))
        for name in names
    ]
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
    return {
        name: calls[0][0] for name, calls in seen.items()
        if len(calls) == 1 and calls[0] and isinstance(calls[0][0], Tensor)
    }  # fmt: skip


def build_factorized(
    model: nn.Module,
    ranks: Mapping[str, int],
    *,
    example_inputs: tuple[Any, ...] | Tensor | None = None,
    choose_by: FormPolicy | None = None,
) -> nn.Module:
    """A copy of ``model`` with each named layer replaced by its rank-``r`` factorization:
    the pair, or (given ``example_inputs``) whichever exact form ``choose_by`` picks on the
    layer's input (see :mod:`shrinkage.compact.low_rank_forms`)."""
    new = copy.deepcopy(model)
    inputs: dict[str, Tensor] = {}
    if example_inputs is not None and ranks:
        inputs = _layer_inputs(new, list(ranks), example_inputs if isinstance(example_inputs, tuple)
                               else (example_inputs,))  # fmt: skip
    policy = choose_by if choose_by is not None else default_policy()
    for name, rank in ranks.items():
        m = new.get_submodule(name)
        subject = LowRank.of(m, rank)
        ctx = FormContext(name)
        x = inputs.get(name)
        chosen = choose_form(subject, x, ctx, policy, x.device) if x is not None else None
        if chosen is None:
            layer = forms_for(subject)[0].build(subject, ctx)  # the reference form: the pair
            assert layer is not None  # the pair builds for every factorization
        else:
            layer = mark(*chosen)
        set_submodule(new, name, layer.train(m.training))
        log.info("factorized %s: rank %d of %d%s", name, rank, min(subject.second.shape[0], subject.first.shape[1]),
                 f" as {chosen[1].chosen}" if chosen else "")  # fmt: skip
    return new
