"""``factorize(model, budget=...)``: the spectra of a model's layers -> ranks meeting a budget."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from shrinkage.budget.prune import BudgetError
from shrinkage.budget.ranks import DENSE, LayerSpectrum, RankCriterion, Totals, select_ranks, spectrum_floor
from shrinkage.budget.spec import Achieved, Budget
from shrinkage.compact.factorize import build_factorized, candidate_layers, check_energy
from shrinkage.errors import ConfigError
from shrinkage.metrics.latency import measure_latency
from shrinkage.metrics.size import count_macs, count_parameters

log = logging.getLogger(__name__)


def _check_floors(min_rank: int, min_energy: float | None) -> None:
    if isinstance(min_rank, bool) or not isinstance(min_rank, int) or min_rank < 1:
        raise ConfigError(f"factorize: min_rank must be an integer >= 1, got {min_rank!r}")
    if min_energy is not None:
        check_energy(min_energy, "min_energy")


def _as_tuple(example_inputs: tuple[Any, ...] | Tensor | None) -> tuple[Any, ...] | None:
    return (example_inputs,) if isinstance(example_inputs, Tensor) else example_inputs


def ranks_under_budget(
    model: nn.Module,
    budget: Budget,
    example_inputs: tuple[Any, ...] | Tensor | None,
    layers: Sequence[str] | None,
    min_rank: int = 1,
    min_energy: float | None = None,
    criterion: RankCriterion = RankCriterion.LOG_KEPT,
) -> dict[str, int]:
    """Rank of every layer to replace (layers left dense are absent) so that the
    factorized model meets ``budget`` with the least damage by ``criterion``; see
    :mod:`shrinkage.budget.ranks`."""
    if not isinstance(budget, Budget):
        raise ConfigError(f"factorize: budget must be a shrinkage.Budget, got {type(budget).__name__}")
    if not isinstance(criterion, RankCriterion):
        known = ", ".join(f"RankCriterion.{c.name}" for c in RankCriterion)
        raise ConfigError(f"factorize: criterion must be one of {known}, got {criterion!r}")
    _check_floors(min_rank, min_energy)
    example = _as_tuple(example_inputs)
    if example is None and (budget.macs is not None or budget.latency_ms is not None):
        raise ConfigError("factorize: a macs or latency_ms budget needs example_inputs (to count MACs per layer)")
    found = candidate_layers(model, layers)
    if not found:
        raise BudgetError(f"factorize: {type(model).__name__} has no Conv2d/Linear layer to factorize under {budget}")
    # a scoped budget (Budget.macs_of): layers outside it save nothing that counts, so stay dense
    counted = count_macs(model, example, budget.mac_layers(model)) if example is not None else None
    per_module = counted.per_module if counted is not None else {}
    totals = Totals(float(counted.total) if counted is not None else 0.0, float(count_parameters(model)))
    spectra = []
    for name, m in found.items():
        w = m.weight.detach().reshape(m.weight.shape[0], -1).double()
        s = torch.linalg.svdvals(w)
        out_dim, in_dim = w.shape
        bias = m.bias.numel() if getattr(m, "bias", None) is not None else 0
        positions = per_module.get(name, 0) / (out_dim * in_dim)
        spectra.append(LayerSpectrum(name, s, out_dim, in_dim, positions, bias, spectrum_floor(s, min_rank, min_energy)))
    latency_input = None
    if budget.latency_ms is not None:
        x = example[0]  # type: ignore[index]
        latency_input = torch.zeros((budget.batch_size, *x.shape[1:]), dtype=x.dtype, device=x.device)

    def meets(ranks: list[int], fractions: dict[str, float]) -> bool:
        latency = None
        if latency_input is not None:
            built = build_factorized(model, {l.name: r for l, r in zip(spectra, ranks, strict=True) if r != DENSE})
            latency = measure_latency(built, latency_input, min_run_time=0.2).median_ms
        return Achieved(fractions["macs"], fractions["params"], latency).meets(budget)

    try:
        ranks = select_ranks(spectra, budget, totals, meets, criterion)
    except ValueError as error:
        floor = error.args[0]
        reachable = ", ".join(f"{k}={floor[k]:.4g}" for k in budget.targets() if k in floor)
        raise BudgetError(
            f"{budget} cannot be met by factorizing {len(spectra)} layers: the smallest reachable is "
            f"{reachable or 'above the latency target'} (min_rank={min_rank}, min_energy={min_energy})"
        ) from None
    chosen = {l.name: r for l, r in zip(spectra, ranks, strict=True) if r != DENSE}
    log.info("ranks under %s: %s", budget, ", ".join(f"{k}={v}" for k, v in chosen.items()) or "all dense")
    return chosen
