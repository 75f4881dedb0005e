"""Training to a MAC budget: a controller that adapts the penalties' strengths.

The controller drives the MAC fraction compaction would leave (estimated cheaply, see
:mod:`shrinkage.optim.estimators`) along a target that moves from the dense model to
the budget. Over ``total_steps`` optimizer steps:

* **warm-up** (``warmup`` of the steps, at least one): the penalty is *off* (scale 0).
  The weights first learn the task while the controller measures how they move; a
  penalty acting before the controller can react would make zeros it cannot take back.
* **ramp** (``ramp`` of the steps): the target falls linearly from 1.0 to the budget.
* **hold**: the target is the budget.

**Why not a plain integral law** (``scale *= exp(gain * (estimate - target))``): zeros
appear long after the strength that causes them (a group's norm must first shrink to
zero, ~100 steps), so by the time the estimate moves, an integrator has wound the
strength far too high and the model collapses. The controller predicts instead.

**The update**, every ``interval`` steps (delayed to the next step on which every
term was proxed, when a term's prox runs ``every`` k steps only): it measures the pace of every group norm and
singular value since the last update and forecasts them a horizon ahead under any
strength (:mod:`shrinkage.optim.forecast`), then solves for the common factor on every
rule's strength whose forecast estimate is the highest one at or below the target due
then (while the target still ramps down: the one nearest to it), keeping the current
strength when it already gives that outcome. Decreases
apply in full; increases are damped (``gain``, in log space); both are clipped to
``max_factor``. The first update, when the warm-up ends, uses the pace measured without
penalty and may move the configured strengths by up to ``START_RANGE``, so a strength
off by 100x either way is corrected at once. Near the end the horizon shrinks to the
steps left.

**Why the horizon scales with the ramp** (``horizon_ramp``): the strength that makes a
removal due within ``h`` steps is about ``1/h`` times a group's norm per unit of learning
rate. A horizon of 60 steps on a ramp of 3,500 (CIFAR-10, 18 epochs) asked the first
update for the first zeros within 60 steps and multiplied the strengths of a ResNet-20's
coupled channels by 10.6 at once: the penalty reached 15 to 25 times the loss and test
accuracy fell to 22-43% before the damped updates could take it back. And while the
target ramps, it is a path, not a bound: with coarse groups (a residual branch is 11.6%
of a ResNet-20's MACs) "at or below" the target 10% into the ramp demands a whole
branch at once; the nearest outcome waits until the path is closer to the next level.
Once the target is the budget, the bound holds again.

The forecast is systematically off (a shrinking group slows down as the loss
starts to need it), so the average error of past forecasts, measured when each falls
due, is added to the next ones: without it the estimate stalls above the budget.

**Cost weighting** (``cost_weighted``): a common strength removes what is cheap to
remove, not what costs MACs: an MLP head may lose every neuron before a conv loses a
filter. Each rule's strength is scaled once by the mean MACs its groups save, relative
to the other rules' (geometric mean 1). Under a budget of some layers' MACs
(``Budget.macs_of``), group Lasso terms whose groups save none of those MACs are not
penalized at all (group weights 0; the fully connected neurons under a conv budget).

**Zeros are kept and admitted** (:mod:`shrinkage.optim.gate`): a zero group stays zero
while the controller runs, and a step may add zeros (or drop ranks) only down to the
current target less ``slack`` of it (relative). The forecast steers; the gate keeps the
estimate from overshooting.

**Focus** (``focus``, :mod:`shrinkage.optim.focus`): the penalty acts only on the
weakest groups per MAC whose removal reaches the budget (less ``focus_margin`` of it),
chosen again at every update; the others train unpenalized. Group Lasso terms only.

**Exact recalibration** (every ``exact_every`` updates): a copy of the model is
compacted and the removed fraction the controller uses is rescaled by
``(1 - exact) / (1 - estimated)``, for what the cheap estimate cannot see.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from shrinkage.budget.spec import Budget
from shrinkage.errors import ConfigError, ShrinkageError
from shrinkage.optim.estimators import ExactMacEstimator, StructureMacEstimator
from shrinkage.optim.focus import Focus
from shrinkage.optim.forecast import Forecast, choose_step
from shrinkage.optim.gate import ZeroGate
from shrinkage.optim.regularizer import Regularizer
from shrinkage.penalties.group_lasso import GroupLasso

log = logging.getLogger(__name__)

#: the first update may move the configured strengths by up to this factor either way
START_RANGE = 1e4
#: exact recalibration rescales the removed fraction by at most this factor either way
_MAX_CORRECTION = 5.0
#: weight of the newest error in the running average of forecast errors
_BIAS_WEIGHT = 0.5


def _number(key: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value > high or value < low or (low_open and value == low):
        raise ConfigError(
            f"controller.{key} must be a number in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}"
        )


def _integer(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"controller.{key} must be an integer >= {low}, got {value!r}")


@dataclass(frozen=True)
class ControllerConfig:
    """Phases as fractions of the steps, and the update (see the module docstring).

    ``interval``: optimizer steps between updates. ``horizon``: the fewest steps the
    forecast looks ahead; ``horizon_ramp``: it looks at least this fraction of the ramp
    ahead. ``gain``: the fraction (in log space) of a solved increase applied.
    ``max_factor``: the most one update multiplies or divides a strength by. ``slack``:
    how far below the current target a step's new zeros may take the estimate, as a
    fraction of the target.
    ``exact_every``: updates between exact recalibrations (0: never). ``cost_weighted``:
    scale each rule's strength by the mean MACs its groups save. ``focus``: penalize only
    the groups chosen for removal (see :mod:`shrinkage.optim.focus`), chosen to leave
    ``budget * (1 - focus_margin)`` of the MACs.
    """

    warmup: float = 0.1
    ramp: float = 0.5
    interval: int = 20
    horizon: int = 60
    horizon_ramp: float = 0.1
    gain: float = 0.5
    max_factor: float = 2.0
    slack: float = 0.01
    exact_every: int = 5
    cost_weighted: bool = True
    focus: bool = False
    focus_margin: float = 0.1

    def __post_init__(self) -> None:
        _number("warmup", self.warmup, 0.0, 1.0)
        _number("ramp", self.ramp, 0.0, 1.0)
        if self.warmup + self.ramp > 1.0:
            raise ConfigError(f"controller.ramp: warmup + ramp must be <= 1, got {self.warmup} + {self.ramp}")
        _integer("interval", self.interval, 1)
        _integer("horizon", self.horizon, 1)
        _number("horizon_ramp", self.horizon_ramp, 0.0, 1.0)
        _number("gain", self.gain, 0.0, 1.0, low_open=True)
        _number("max_factor", self.max_factor, 1.0, 1e6, low_open=True)
        _number("slack", self.slack, 0.0, 1.0)
        _integer("exact_every", self.exact_every, 0)
        if not isinstance(self.cost_weighted, bool):
            raise ConfigError(f"controller.cost_weighted must be true or false, got {self.cost_weighted!r}")
        if not isinstance(self.focus, bool):
            raise ConfigError(f"controller.focus must be true or false, got {self.focus!r}")
        _number("focus_margin", self.focus_margin, 0.0, 1.0)


class BudgetController:
    """Adapts ``regularizer.scales`` so the estimated MAC fraction follows the target.

    Built by :func:`attach_controller`; a :class:`ProximalOptimizer` over the same
    regularizer calls :meth:`before_prox` and :meth:`after_prox` every step.
    """

    def __init__(
        self,
        regularizer: Regularizer,
        model: nn.Module,
        budget: float,
        config: ControllerConfig,
        total_steps: int,
        estimator: StructureMacEstimator,
        exact: ExactMacEstimator | None = None,
    ) -> None:
        self.regularizer, self.model, self.budget, self.config = regularizer, model, budget, config
        self.estimator, self.exact, self.total_steps = estimator, exact, total_steps
        self.warmup_steps = max(1, round(config.warmup * total_steps))
        self.ramp_steps = round(config.ramp * total_steps)
        self.horizon = max(config.horizon, round(config.horizon_ramp * self.ramp_steps))
        self.rules = sorted({t.rule for t in regularizer.terms})
        # terms with ``every = k`` are proxed on every k-th step only; in between, gradient
        # steps revive what the last prox zeroed (tiny, but not zero), so the weights are read
        # on steps where every term was just proxed: an update due elsewhere waits for one
        self.cycle = math.lcm(*(t.every for t in regularizer.terms))  # 1 without terms
        self._pending = False
        self.log_scales = {r: math.log(max(regularizer.scales[r], 1e-30)) for r in self.rules}
        if config.cost_weighted:
            for r, weight in _cost_weights(regularizer, estimator).items():
                self.log_scales[r] += math.log(weight)
        self.steps = self.updates = 0
        self.active = False
        self.correction = 1.0  # exact recalibration of the removed fraction
        self.bias = 0.0  # running average of (estimate when due - forecast)
        self.gate = ZeroGate(regularizer, estimator)
        self.focus = Focus(regularizer, estimator, config.focus_margin) if config.focus else None
        self._due: dict[int, float] = {}  # step -> the (unbiased) forecast made for it
        self._previous: list[Tensor] = estimator.summaries()
        self._previous_step = 0
        self.last_estimate = self.last_forecast = self._corrected(estimator.from_summaries(self._previous))
        self._apply(off=True)

    def target(self, step: int) -> float:
        """The MAC fraction due after ``step`` optimizer steps."""
        ramped = step - self.warmup_steps
        if ramped <= 0:
            return 1.0
        if ramped >= self.ramp_steps:
            return self.budget
        return 1.0 - (1.0 - self.budget) * ramped / self.ramp_steps

    def estimate(self) -> float:
        """The (recalibrated) estimate of the MAC fraction compaction would leave now."""
        return self._corrected(self.estimator.estimate())

    def _corrected(self, raw: float) -> float:
        return min(1.0, max(0.0, 1.0 - self.correction * (1.0 - raw)))

    def _cautious(self, raw: float) -> float:
        """What the gate compares with the floor: a recalibration saying less was removed
        than the structure shows is not trusted to let more zeros in."""
        return min(raw, self._corrected(raw))

    def before_prox(self, optimizer: Any) -> None:
        """Called between the gradient step and the prox (``optimizer``: the ProximalOptimizer)."""
        if self.active:
            self.gate.snapshot()

    @torch.no_grad()
    def after_prox(self, optimizer: Any) -> None:
        """Called after each proximal step."""
        self.steps += 1
        lrs = optimizer.threshold_lrs()
        if self.active:
            self.gate.settle(self.target(self.steps), self.config.slack, self._cautious, lrs, optimizer.prox_steps)
        if self.steps == self.warmup_steps and not self.active:
            self._update(lrs, START_RANGE, damped=False)
            self.active = True
            log.info(
                "budget controller: penalty on after %d warm-up steps, strengths x%s",
                self.steps,
                ", x".join(f"{self.regularizer.scales[r]:.3g}" for r in self.rules),
            )
        elif self._pending or (self.steps - self.warmup_steps) % self.config.interval == 0:
            self._pending = optimizer.prox_steps % self.cycle != 0
            if not self._pending:
                self._update(lrs, self.config.max_factor, damped=True)

    def _update(self, lrs: dict[int, float], max_factor: float, damped: bool) -> None:
        """Measure; once the warm-up is over, forecast and solve for the new strengths."""
        now = self.estimator.summaries()
        elapsed = max(1, self.steps - self._previous_step)
        pace = [
            (n - p) / elapsed if n.shape == p.shape else torch.zeros_like(n)
            for n, p in zip(now, self._previous, strict=False)
        ]
        in_effect = [self.regularizer.scale_of(t) for t in self.regularizer.terms]
        self._previous, self._previous_step = now, self.steps
        if self.steps < self.warmup_steps:
            return
        if self.active and self.exact is not None and self.config.exact_every:
            self.updates += 1
            if self.updates % self.config.exact_every == 0:
                self._recalibrate()
        self.last_estimate = self._corrected(self.estimator.from_summaries(now))
        if self.steps in self._due:
            error = self.last_estimate - self._due.pop(self.steps)
            self.bias = min(0.5, max(-0.5, (1 - _BIAS_WEIGHT) * self.bias + _BIAS_WEIGHT * error))
        unit = self.estimator.unit_shrink(lrs)
        if self.focus is not None:
            self.focus.choose(now, unit, self.budget)
            unit = self.focus.weighted(unit)
        forecast = Forecast(now, pace, unit, in_effect)
        horizon = max(1, min(self.horizon, self.total_steps - self.steps))
        base = [math.exp(self.log_scales[t.rule]) for t in self.regularizer.terms]

        def forecast_at(log_factor: float) -> float:
            ahead = forecast.ahead([b * math.exp(log_factor) for b in base], horizon)
            return min(1.0, max(0.0, self._corrected(self.estimator.from_summaries(ahead)) + self.bias))

        goal = self.target(self.steps + horizon)
        step = choose_step(forecast_at, goal, math.log(max_factor), nearest=goal > self.budget)
        # increases are damped: an overshoot makes zeros that are held, an undershoot is made up next time
        step = self.config.gain * step if damped and step > 0 else step
        for r in self.rules:
            self.log_scales[r] = min(60.0, max(-60.0, self.log_scales[r] + step))  # no under/overflow
        self._apply()
        self.last_forecast = forecast_at(step)
        self._due[self.steps + horizon] = self.last_forecast - self.bias
        log.debug(
            "budget controller step %d: estimate %.4f, forecast %.4f for target %.4f, strength x%.4g",
            self.steps,
            self.last_estimate,
            self.last_forecast,
            goal,
            math.exp(step),
        )

    def _apply(self, off: bool = False) -> None:
        for r in self.rules:
            self.regularizer.set_scale(r, 0.0 if off else math.exp(self.log_scales[r]))

    def _recalibrate(self) -> None:
        assert self.exact is not None
        raw = self.estimator.estimate()
        try:
            exact = self.exact.estimate(self.model)
        except ShrinkageError as error:
            log.warning("budget controller: exact MAC count failed (%s); using the cheap estimate alone", error)
            self.exact = None
            return
        if 1.0 - raw > 1e-3 and 1.0 - exact > 1e-3:
            self.correction = min(_MAX_CORRECTION, max(1.0 / _MAX_CORRECTION, (1.0 - exact) / (1.0 - raw)))
        log.debug("budget controller: exact %.4f vs estimated %.4f, correction %.3f", exact, raw, self.correction)

    def stats(self) -> dict[str, float]:
        """Per-epoch columns: each rule's strength multiplier, the estimate, forecast and target."""
        out = {f"strength_scale[rule{r}]": self.regularizer.scales[r] for r in self.rules}
        out.update(
            estimated_macs=self.last_estimate, forecast_macs=self.last_forecast, target_macs=self.target(self.steps)
        )
        if self.focus is not None:
            out["penalized_groups"] = self.focus.fraction_chosen()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "updates": self.updates, "active": self.active, "correction": self.correction,
            "bias": self.bias, "due": dict(self._due), "log_scales": dict(self.log_scales),
            "last_estimate": self.last_estimate, "last_forecast": self.last_forecast, "exact": self.exact is not None,
            "previous": list(self._previous), "previous_step": self._previous_step,
            "gate": self.gate.state_dict(), "pending": self._pending,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.updates, self.active = int(state["steps"]), int(state["updates"]), bool(state["active"])
        self.correction, self.bias = float(state["correction"]), float(state["bias"])
        self._due = {int(k): float(v) for k, v in state["due"].items()}
        self.log_scales = {int(r): float(v) for r, v in state["log_scales"].items()}
        self.last_estimate, self.last_forecast = float(state["last_estimate"]), float(state["last_forecast"])
        if not state["exact"]:
            self.exact = None
        self._previous, self._previous_step = list(state["previous"]), int(state["previous_step"])
        self.gate.load_state_dict(state["gate"])
        self._pending = bool(state.get("pending", False))  # absent from checkpoints written before it existed
        self._apply(off=not self.active)


def _cost_weights(regularizer: Regularizer, estimator: StructureMacEstimator) -> dict[int, float]:
    """Per rule, the mean MACs of its groups over the geometric mean across rules.

    A rule whose groups save no MAC the budget counts (a fully connected layer under a
    budget of the conv layers' MACs) keeps its configured strength (weight 1) and stays out
    of the mean: a near-zero cost there would inflate every other rule's weight without bound.
    """
    per_rule: dict[int, list[float]] = {}
    for term, cost in zip(regularizer.terms, estimator.group_costs(), strict=True):
        per_rule.setdefault(term.rule, []).append(cost)
    means = {r: sum(c) / len(c) for r, c in per_rule.items()}
    costed = [m for m in means.values() if m > 0]
    if not costed:
        return dict.fromkeys(means, 1.0)
    center = math.exp(sum(math.log(m) for m in costed) / len(costed))
    return {r: m / center if m > 0 else 1.0 for r, m in means.items()}


def attach_controller(
    regularizer: Regularizer,
    model: nn.Module,
    example_inputs: tuple[Any, ...] | Tensor,
    budget: Budget | float,
    config: ControllerConfig | None = None,
    total_steps: int = 1,
) -> BudgetController:
    """Build a controller that trains ``model`` towards ``budget`` (its ``macs``, counted on
    its ``macs_of`` layers if it has a scope; or a fraction of every MAC) in ``total_steps``
    optimizer steps, and attach it to ``regularizer``: a
    :class:`ProximalOptimizer` over that regularizer then runs it at every step.

    Every term needs a MAC estimate (the SSL group kinds, coupled channels, heads, or a
    nuclear norm on matrices). Each rule's strength starts from its configured value.
    """
    config = config if config is not None else ControllerConfig()
    fraction = _budget_fraction(budget)
    _integer("total_steps", total_steps, 1)
    if not regularizer.terms:
        raise ConfigError("controller: the regularizer has no terms to adapt")
    example = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    layers = budget.mac_layers(model) if isinstance(budget, Budget) else None  # a scoped budget's MACs
    estimator = StructureMacEstimator(regularizer, model, example, layers)
    exact = ExactMacEstimator(regularizer, model, example, layers) if config.exact_every else None
    controller = BudgetController(regularizer, model, fraction, config, total_steps, estimator, exact)
    regularizer.controller = controller
    if layers is not None and not config.focus:  # focus sets the group weights itself
        _spare_free_groups(regularizer, estimator)
    scope = f" (the {budget.scope()} layers')" if isinstance(budget, Budget) and budget.scope() else ""
    log.info("budget controller: MACs%s to %.3g of dense over %d steps (%s)", scope, fraction, total_steps, config)
    return controller


def _spare_free_groups(regularizer: Regularizer, estimator: StructureMacEstimator) -> None:
    """Under a scoped budget, a group Lasso term whose groups save none of the budgeted MACs
    even all but one together (a fully connected layer's neurons under a budget of the conv
    layers' MACs) gets group weights 0: its penalty would cost accuracy without moving the
    budget, and the zero gate, which admits zeros by what they save, would let all of them in."""
    spared = []
    for index, term in enumerate(regularizer.terms):
        if isinstance(term.penalty, GroupLasso) and estimator.saves_nothing(index):
            regularizer.set_group_weights(index, torch.zeros(term.grouping.shape[0]))
            spared.append(term.label)
    if spared:
        log.info("budget controller: not penalized, as they save none of the budgeted MACs: %s", ", ".join(spared))


def _budget_fraction(budget: Budget | float) -> float:
    if isinstance(budget, Budget):
        if budget.macs is None:
            raise ConfigError("controller: the budget has no macs target; the controller trains to a MAC budget")
        if budget.params is not None or budget.latency_ms is not None:
            log.warning("controller: only the budget's macs is controlled; the final selection enforces the rest")
        return float(budget.macs)
    _number("budget", budget, 0.0, 1.0, low_open=True)
    return float(budget)
