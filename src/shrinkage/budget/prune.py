"""``prune()``: zero the weakest removable groups until the compacted model meets a budget.

The candidates (channels of every space, attention heads, whole residual branches; see
:mod:`shrinkage.budget.candidates`) are ordered once by estimated damage per unit of
budget saved (the damage from :mod:`shrinkage.budget.importance`: measured on data by
``Taylor``, or from group norms). A prefix of that order is a selection; the smallest
prefix whose *compacted* model meets the budget is found by bisection, each probe
measured exactly (the model is zeroed, compacted by :func:`shrinkage.compact` and
counted), so the linearized costs only decide the order, never the reported figures.
Removing too much by one coarse group is then undone where it fits: an important group
of the prefix is given back and the next, finer groups of the order removed instead,
while the budget holds.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from shrinkage.budget.candidates import Unit, find_units
from shrinkage.budget.importance import GroupNorm, Importance
from shrinkage.budget.spec import Achieved, Budget
from shrinkage.compact.api import compact
from shrinkage.compact.choice import ByMacs
from shrinkage.compact.plan import CompactOptions
from shrinkage.errors import ConfigError, ShrinkageError
from shrinkage.graph.capture import capture_channel_graph
from shrinkage.metrics.latency import measure_latency
from shrinkage.metrics.size import count_macs, count_parameters
from shrinkage.optim.masks import ZeroMask

log = logging.getLogger(__name__)

#: stop giving groups back once the slack is below this fraction of the target
_FILL_TOLERANCE = 0.002
_MAX_FILL_ROUNDS = 4


class BudgetError(ShrinkageError, ValueError):
    """A budget that the model cannot meet, or a selection that matches nothing."""


@dataclass(frozen=True)
class _Step:
    unit: int
    groups: Tensor  # indices of the unit's groups this step removes
    whole: bool  # depth: the unit goes entirely
    score: float


@dataclass
class PruneResult:
    """The selection ``prune`` settled on.

    ``model`` is a copy of the input with the selected groups zeroed (compact it, or
    fine-tune it with :meth:`zero_mask` holding the zeros); ``compact`` is its compacted
    form, whose exact size and speed ``achieved`` reports against ``budget``.
    """

    model: nn.Module
    compact: nn.Module
    budget: Budget
    achieved: Achieved
    removed: dict[str, list[int]] = field(default_factory=dict)
    depth: list[str] = field(default_factory=list)
    evaluations: int = 0
    #: the class of the damage estimate that ordered the groups
    importance: str = "GroupNorm"
    _masks: dict[int, tuple[nn.Parameter, Tensor]] = field(default_factory=dict, repr=False)

    def zero_mask(self) -> ZeroMask:
        """Keeps the removed groups at zero while fine-tuning ``model``."""
        return ZeroMask(self._masks)

    def summary(self) -> dict[str, Any]:
        """JSON-serializable: target and achieved side by side, what was removed."""
        return {
            "budget": self.budget.targets(),
            "macs_of": self.budget.scope(),
            "achieved": {"macs": self.achieved.macs, "params": self.achieved.params,
                         "latency_ms": self.achieved.latency_ms},  # fmt: skip
            "side_by_side": self.achieved.side_by_side(self.budget),
            "removed_groups": {k: len(v) for k, v in self.removed.items()},
            "depth_removed": self.depth,
            "evaluations": self.evaluations,
            "importance": self.importance,
        }


def _check_round_to(round_to: int, min_channels: int) -> None:
    for key, value in (("round_to", round_to), ("min_channels", min_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"prune: {key} must be an integer >= 1, got {value!r}")


class _Search:
    """The model under selection: one working copy, its units and exact measurements."""

    def __init__(self, model: nn.Module, example_inputs: tuple[Any, ...], budget: Budget, options: CompactOptions,
                 round_to: int, min_channels: int, depth: bool, importance: Importance) -> None:  # fmt: skip
        self.work = copy.deepcopy(model).eval()
        self.example = example_inputs
        self.budget = budget
        self.options = options
        self.round_to = round_to
        self.original = {k: v.detach().clone() for k, v in self.work.state_dict().items()}
        #: the MACs a scoped budget counts (``Budget.macs_of``), by the dense model's names
        self.mac_layers = budget.mac_layers(self.work)
        self.dense_macs = count_macs(self.work, example_inputs, self.mac_layers)
        self.dense_params = count_parameters(self.work)
        if self.mac_layers is not None and self.dense_macs.total == 0:
            raise BudgetError(f"budget macs_of={budget.scope()}: those layers of {type(model).__name__} "
                              "compute no MACs on the example inputs")  # fmt: skip
        # the capture compact() uses too, so every unit found here is one compaction removes
        self.graph = capture_channel_graph(
            self.work, example_inputs, options.capture, leaf_modules=options.leaf_modules,
            allow_unknown=options.allow_unknown,
        )  # fmt: skip
        self.units = find_units(self.work, self.graph, self.dense_macs.per_module)
        self.steps = self._order(min_channels, depth, importance)
        self.evaluations = 0
        if budget.latency_ms is not None:
            shape = (budget.batch_size, *example_inputs[0].shape[1:])
            self.latency_input = torch.zeros(shape, dtype=example_inputs[0].dtype, device=example_inputs[0].device)

    # -- ordering ------------------------------------------------------------------------
    def _cost(self, unit: Unit) -> Tensor:
        """Each group's saving as a fraction of the budgeted quantities (MACs stand in for
        latency: the order only needs to be roughly right, the measurement is exact)."""
        cost = torch.zeros(unit.size, dtype=torch.float64)
        if self.budget.macs is not None or self.budget.latency_ms is not None:
            cost += unit.macs / max(1, self.dense_macs.total)
        if self.budget.params is not None:
            cost += unit.params / max(1, self.dense_params)
        return cost

    def _order(self, min_channels: int, depth: bool, importance: Importance) -> list[_Step]:
        candidates: list[_Step] = []
        damage = importance.of_groups(self.work, self.units)
        whole_damage = importance.of_whole(self.units, damage)
        for i, unit in enumerate(self.units):
            cost = self._cost(unit)
            for g in range(unit.size):
                if cost[g] > 0:
                    candidates.append(_Step(i, torch.tensor([g]), False, float(damage[i][g] / cost[g])))
            if depth and unit.depth_ok and unit.is_channels and float(cost.sum()) > 0:
                candidates.append(_Step(i, torch.arange(unit.size), True, whole_damage[i] / float(cost.sum())))
        candidates.sort(key=lambda s: (s.score, not s.whole))  # a whole unit first on ties
        steps, removed, whole = [], [0] * len(self.units), [False] * len(self.units)
        for step in candidates:
            unit = self.units[step.unit]
            if whole[step.unit]:
                continue
            if step.whole:
                whole[step.unit] = True
            else:
                floor = min(unit.size, max(min_channels, self.round_to if unit.is_channels else 1))
                if removed[step.unit] + 1 > unit.size - floor:
                    continue
                removed[step.unit] += 1
            steps.append(step)
        return steps

    # -- one probe -------------------------------------------------------------------------
    def selection(self, chosen: range | frozenset[int]) -> list[Tensor]:
        """Bool ``(n,)`` per unit: groups removed by the ``chosen`` steps, with kept channel
        counts rounded up to a multiple of ``round_to``."""
        removed = [torch.zeros(u.size, dtype=torch.bool) for u in self.units]
        for j in chosen:
            step = self.steps[j]
            removed[step.unit][step.groups] = True
        for unit, mask in zip(self.units, removed, strict=True):
            # channels training left at zero go too, whatever is chosen here
            kept = unit.size - int((mask | unit.zero).sum())
            if not unit.is_channels or self.round_to == 1 or kept == 0:
                continue
            want = min(unit.size, math.ceil(kept / self.round_to) * self.round_to)
            if want > kept:  # give back the strongest chosen channels (compaction pads with zero ones)
                idx = (mask & ~unit.zero).nonzero().flatten()
                back = idx[unit.norms[idx].argsort(descending=True)[: want - kept]]
                mask[back] = False
        return removed

    @torch.no_grad()
    def apply(self, removed: list[Tensor]) -> None:
        self.work.load_state_dict(self.original)
        for unit, mask in zip(self.units, removed, strict=True):
            if mask.any():
                matrix = unit.grouping.gather()
                matrix[mask] = 0
                unit.grouping.scatter_(matrix)

    def measure(self, removed: list[Tensor]) -> tuple[Achieved, nn.Module]:
        self.apply(removed)
        self.evaluations += 1
        # the capture above, reused: the zero patterns change the weights, not the graph
        small = compact(self.work, self.example, self.options, graph=self.graph)
        macs = count_macs(small, self.example, self.mac_layers).total / max(1, self.dense_macs.total)
        params = count_parameters(small) / max(1, self.dense_params)
        latency = None
        if self.budget.latency_ms is not None:
            latency = measure_latency(small, self.latency_input, min_run_time=0.2).median_ms
        return Achieved(macs, params, latency), small

    def meets(self, k: int) -> bool:
        return self.measure(self.selection(range(k)))[0].meets(self.budget)

    def saving(self, j: int) -> float:
        """Estimated saving of step ``j`` as a fraction of the budgeted quantities."""
        step = self.steps[j]
        return float(self._cost(self.units[step.unit])[step.groups].sum())


def _smallest_prefix(search: _Search) -> int:
    """Smallest ``k`` whose selection meets the budget (bisection; measurements are
    treated as monotone in ``k``, which removing more groups makes them nearly)."""
    lo, hi = 0, len(search.steps)  # invariant: hi meets, lo does not (unless lo == 0 meets)
    if search.meets(0):
        return 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if search.meets(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _slack(budget: Budget, achieved: Achieved) -> float:
    return min(t - achieved.value(key) for key, t in budget.targets().items())  # type: ignore[operator]


def _fewest_extra(search: _Search, base: frozenset[int], rest: list[int]) -> tuple[frozenset[int], Achieved] | None:
    """``base`` plus the fewest of the next steps ``rest`` (in order) that meet the budget,
    by bisection over how many; ``None`` if even all of them do not. Savings interact
    (a conv's MACs scale with its kept inputs *and* outputs), so this is measured, not
    estimated."""
    lo, hi = 0, len(rest)
    best: tuple[frozenset[int], Achieved] | None = None
    while lo < hi:
        mid = (lo + hi) // 2
        trial = base | frozenset(rest[:mid])
        got, _ = search.measure(search.selection(trial))
        if got.meets(search.budget):
            hi, best = mid, (trial, got)
        else:
            lo = mid + 1
    if best is None and lo == len(rest):
        trial = base | frozenset(rest)
        got, _ = search.measure(search.selection(trial))
        best = (trial, got) if got.meets(search.budget) else None
    return best


def _refine(search: _Search, k: int, achieved: Achieved) -> frozenset[int]:
    """Spend the slack left by the last, possibly coarse, step of the prefix: give back
    one of the prefix's most important groups and remove the next groups of the order
    instead, as long as the budget (measured) still holds and the result gets closer."""
    chosen = frozenset(range(k))
    budget = search.budget
    if search.round_to != 1 or budget.latency_ms is not None:
        return chosen  # rounding and noisy timings make the slack too coarse to spend
    tolerance = _FILL_TOLERANCE * min(budget.targets().values())
    slack = _slack(budget, achieved)
    tried: set[int] = set()
    for _ in range(_MAX_FILL_ROUNDS):
        if slack <= tolerance:
            break
        back = [j for j in sorted(chosen, key=lambda j: -search.steps[j].score) if j not in tried]
        if not back:
            break
        j = back[0]
        tried.add(j)
        # finer steps only: swapping a group for one of the same size changes nothing
        rest = [n for n in range(k, len(search.steps)) if n not in chosen and search.saving(n) < search.saving(j)]
        found = _fewest_extra(search, chosen - {j}, rest)
        if found is None:
            continue
        trial, got = found
        if _slack(budget, got) < slack:
            chosen, slack = trial, _slack(budget, got)
    return chosen


def _masks(search: _Search, removed: list[Tensor], model: nn.Module) -> dict[int, tuple[nn.Parameter, Tensor]]:
    """Keep-masks of the parameters of ``model`` (a copy of the working model) holding
    zeroed groups: the same groupings evaluated on tensors of ones.

    Groups that were already zero before the selection (what regularized training drove
    to zero, shifts aside) are held too, shifts included: the budget counted them as
    removed, so nothing fine-tuning does may bring them back (the consumers' slices of a
    channel that still emits its shift's constant get a gradient)."""
    by_name = dict(model.named_parameters())
    work_names = {id(p): n for n, p in search.work.named_parameters()}
    masks: dict[int, tuple[nn.Parameter, Tensor]] = {}
    for unit, chosen in zip(search.units, removed, strict=True):
        mask = chosen | unit.zero
        if not mask.any():
            continue
        ones = {id(p): torch.ones_like(p, dtype=torch.bool) for p, _, _ in unit.grouping.members}
        for p, dim, index in unit.grouping.members:
            flat = index[mask].reshape(-1)
            ones[id(p)].index_fill_(dim % p.dim(), flat, False)
        for pid, keep in ones.items():
            target = by_name[work_names[pid]]
            old = masks.get(id(target))
            masks[id(target)] = (target, keep if old is None else old[1] & keep)
    return masks


def _counting_options(options: CompactOptions | None, budget: Budget) -> CompactOptions:
    """Unless told otherwise, a MAC or parameter budget is checked on the fewest-MAC form of
    every layer: deterministic, no clock in the bisection, and the count the budget is
    about. A latency budget keeps the measured (fastest) forms, since speed is its target."""
    options = options or CompactOptions()
    if options.choose_by is None and budget.latency_ms is None:
        return dataclasses.replace(options, choose_by=ByMacs())
    return options


def _rounding_options(options: CompactOptions, round_to: int) -> CompactOptions:
    """Compaction rounds kept widths too: a space whose zero channels outnumber what the
    selection can give back keeps some of them (exactly zero, so outputs do not change)."""
    if round_to == 1 or options.round_to != 1:
        return options
    return dataclasses.replace(options, round_to=round_to)


def prune(
    model: nn.Module,
    example_inputs: tuple[Any, ...] | Tensor,
    budget: Budget,
    *,
    round_to: int = 1,
    min_channels: int = 1,
    depth: bool = True,
    importance: Importance | None = None,
    options: CompactOptions | None = None,
) -> PruneResult:
    """Zero the weakest removable groups of a copy of ``model`` until its compacted form
    meets ``budget``; ``model`` is left untouched.

    Groups are coupled channels (everything that must vanish for a channel to go),
    attention heads and, with ``depth``, whole residual branches, removed in order of
    estimated damage per unit of budget saved. ``importance`` estimates the damage:
    :class:`~shrinkage.budget.importance.Taylor` on a few batches of data (recommended:
    comparable across layers), else :class:`~shrinkage.budget.importance.GroupNorm`
    (no data; favours removing narrow layers, see its docstring).
    ``round_to`` rounds every kept width up to a multiple (hardware-friendly widths);
    ``min_channels`` channels stay in each space unless it goes whole. A budget below
    what can be removed raises :class:`BudgetError` naming the smallest reachable value.
    """
    if not isinstance(budget, Budget):
        raise ConfigError(f"prune: budget must be a shrinkage.Budget, got {type(budget).__name__}")
    _check_round_to(round_to, min_channels)
    if isinstance(example_inputs, Tensor):
        example_inputs = (example_inputs,)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type != "cpu":  # selection and compaction decide on the CPU (see compact())
        inputs = tuple(x.cpu() if isinstance(x, Tensor) else x for x in example_inputs)
        result = prune(copy.deepcopy(model).cpu(), inputs, budget, round_to=round_to, min_channels=min_channels,
                       depth=depth, importance=importance, options=options)  # fmt: skip
        result.model.to(device)  # in place: the zero mask keeps pointing at its parameters
        result.compact.to(device)
        result._masks = {k: (p, keep.to(device)) for k, (p, keep) in result._masks.items()}
        return result
    if importance is not None and not isinstance(importance, Importance):
        raise ConfigError(f"prune: importance must be a shrinkage.budget.importance.Importance, "
                          f"got {type(importance).__name__}")  # fmt: skip
    importance = importance or GroupNorm()
    options = _rounding_options(_counting_options(options, budget), round_to)
    search = _Search(model, example_inputs, budget, options, round_to, min_channels, depth, importance)
    if not search.units:
        raise BudgetError(f"prune: {type(model).__name__} has no removable channel or head to meet {budget}")
    floor, _ = search.measure(search.selection(range(len(search.steps))))
    if not floor.meets(budget):
        reachable = ", ".join(f"{k}={floor.value(k):.4g}" for k in budget.targets())
        raise BudgetError(f"{budget} cannot be met: the smallest reachable is {reachable} "
                          f"(pinned channels and min_channels={min_channels}, round_to={round_to} stay)")  # fmt: skip
    k = _smallest_prefix(search)
    achieved, _ = search.measure(search.selection(range(k)))
    chosen = _refine(search, k, achieved)
    removed = search.selection(chosen)
    achieved, small = search.measure(removed)
    search.apply(removed)
    masked = copy.deepcopy(search.work)
    result = PruneResult(masked, small, budget, achieved, evaluations=search.evaluations,
                         importance=type(importance).__name__, _masks=_masks(search, removed, masked))  # fmt: skip
    for i, (unit, mask) in enumerate(zip(search.units, removed, strict=True)):
        if mask.all() and any(search.steps[j].whole and search.steps[j].unit == i for j in chosen):
            result.depth.append(unit.label)
        if mask.any():
            result.removed[unit.label] = mask.nonzero().flatten().tolist()
    reached = ", ".join(f"{key}={achieved.value(key):.4g}" for key in budget.targets())
    log.info("pruned %s to %s in %d measurements (%s)", type(model).__name__, reached, search.evaluations, budget)
    return result
