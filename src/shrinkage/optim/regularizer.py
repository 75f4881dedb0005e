"""A model's regularization: rules resolved once into (grouping, penalty) terms.

Each rule's strength can be scaled at run time by a multiplier, ``scales[rule]``
(default 1.0): penalties are frozen dataclasses, so whatever adapts the strength during
training (:mod:`shrinkage.optim.controller`) changes the multiplier, not the penalty.
Both the proximal threshold and :meth:`Regularizer.value` use it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from shrinkage.errors import ConfigError
from shrinkage.groups.base import Grouping
from shrinkage.groups.kinds import GroupKind
from shrinkage.optim.rules import Rule
from shrinkage.penalties.base import Penalty
from shrinkage.penalties.group_lasso import GroupLasso
from shrinkage.penalties.nuclear_norm import NuclearNorm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Term:
    """One penalty on one grouping; ``rule`` is the index of the rule it came from."""

    rule: int
    grouping: Grouping
    penalty: Penalty
    kind: GroupKind
    every: int = 1

    @property
    def label(self) -> str:
        """``module:groups:penalty``, e.g. ``conv2:channels:group_lasso`` (unique per rule)."""
        return f"{self.grouping.label}:{_snake(type(self.kind).__name__)}:{_snake(type(self.penalty).__name__)}"


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


class StrengthController(Protocol):
    """What adapts a regularizer's ``scales`` during training (see ``attach_controller``).

    A :class:`ProximalOptimizer` calls ``before_prox`` between its gradient step and the
    prox, and ``after_prox`` after the prox; the state travels in the regularizer's (and so
    the optimizer's) ``state_dict``; ``stats`` are added to the per-epoch metrics rows.
    """

    def before_prox(self, optimizer: Any) -> None: ...

    def after_prox(self, optimizer: Any) -> None: ...

    def stats(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Regularizer:
    """``sum_terms scale[rule] * penalty(grouping)`` over a model, with value, prox and statistics."""

    def __init__(self, model: nn.Module, rules: Sequence[Rule]) -> None:
        terms: list[Term] = []
        for i, rule in enumerate(rules):
            chosen = rule.chosen(model)
            if not chosen:
                raise ConfigError(f"regularization.rules[{i}] ({rule.select}) matches no module of the model")
            for grouping in rule.groups.build_for(model, chosen):
                terms.append(Term(i, grouping, rule.penalty, rule.groups, rule.every))
        self.terms: tuple[Term, ...] = tuple(terms)
        #: strength multiplier per rule index; the threshold is ``lr * every * scale * strength``
        self.scales: dict[int, float] = {i: 1.0 for i in range(len(rules))}
        #: set by ``attach_controller``; ProximalOptimizer calls it around each prox
        self.controller: StrengthController | None = None
        #: per term index, one weight per group multiplying its threshold and its value (a
        #: group Lasso term without an entry weighs every group 1): a controller that
        #: penalizes only the groups selection will remove sets them (``focus``)
        self.group_weights: dict[int, Tensor] = {}
        #: for terms proxed every k > 1 steps: their matrix as the last prox left it, with the
        #: prox call it came from (see ``structure_of``)
        self._after_prox: dict[int, tuple[Tensor, int]] = {}
        #: the last ``prox_`` call's step count, and the parameters' in-place versions right after it
        self._last_call = 0
        self._versions: dict[int, int] = {}
        log.info("regularizer: %d terms from %d rules", len(self.terms), len(rules))

    def scale_of(self, term: Term) -> float:
        return self.scales.get(term.rule, 1.0)

    def set_scale(self, rule: int, scale: float) -> None:
        """Set rule ``rule``'s strength multiplier (finite, >= 0)."""
        if rule not in self.scales:
            raise ConfigError(f"regularizer has no rule {rule} (rules 0..{len(self.scales) - 1})")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise ConfigError(f"strength scale of rule {rule} must be a finite number >= 0, got {scale!r}")
        self.scales[rule] = float(scale)

    def set_group_weights(self, index: int, weights: Tensor | None) -> None:
        """Weigh the groups of term ``index`` (group Lasso only; ``None``: every group 1)."""
        if not 0 <= index < len(self.terms):
            raise ConfigError(f"regularizer has no term {index} (terms 0..{len(self.terms) - 1})")
        term = self.terms[index]
        if weights is None:
            self.group_weights.pop(index, None)
            return
        if not isinstance(term.penalty, GroupLasso):
            raise ConfigError(f"term {term.label}: group weights need a group_lasso penalty")
        if weights.shape != (term.grouping.shape[0],) or not bool(torch.isfinite(weights).all() & (weights >= 0).all()):
            raise ConfigError(
                f"term {term.label}: group weights must be {term.grouping.shape[0]} finite numbers >= 0, "
                f"got shape {tuple(weights.shape)}"
            )
        self.group_weights[index] = weights.detach().clone()

    def _penalty_value(self, index: int, matrix: Tensor) -> Tensor:
        term, weights = self.terms[index], self.group_weights.get(index)
        if weights is not None and isinstance(term.penalty, GroupLasso):
            return term.penalty.value(matrix, weights)
        return term.penalty.value(matrix)

    def value(self) -> Tensor:
        """Differentiable total penalty (add it to the loss in the subgradient mode)."""
        total: Tensor | None = None
        for index, term in enumerate(self.terms):
            v = self.scale_of(term) * self._penalty_value(index, term.grouping.gather())
            total = v if total is None else total + v
        return total if total is not None else torch.zeros(())

    def step_for(self, term: Term, step_of: dict[int, float]) -> float:
        """The prox step of ``term``: ``lr * every * scale`` (the penalty multiplies in its strength).

        ``step_of`` maps ``id(parameter)`` to the learning rate its threshold uses.
        """
        lrs = {step_of[id(p)] for p in term.grouping.parameters}
        if len(lrs) != 1:
            raise ConfigError(
                f"term {term.label}: its parameters have different learning rates {sorted(lrs)}; "
                "put them in one optimizer parameter group"
            )
        return lrs.pop() * term.every * self.scale_of(term)

    @torch.no_grad()
    def prox_(self, step_of: dict[int, float], step_count: int = 1) -> None:
        """Apply every term's proximal map with ``step = lr * scale`` of its parameters.

        ``step_of`` maps ``id(parameter)`` to its learning rate. Terms with ``every = k``
        run on every k-th call with a k-times larger step.
        """
        for index, term in enumerate(self.terms):
            if step_count % term.every:
                continue
            step = self.step_for(term, step_of)
            if step == 0:
                self._after_prox.pop(index, None)
                continue  # the identity map (a rule switched off by its scale)
            if isinstance(term.penalty, GroupLasso):
                # skips gather/scatter where it can
                term.penalty.prox_grouping_(term.grouping, step, self.group_weights.get(index))
                if term.every > 1:
                    self._after_prox[index] = (term.grouping.gather().clone(), step_count)
                continue
            matrix = term.grouping.gather()
            term.penalty.prox_(matrix, step)
            term.grouping.scatter_(matrix)
            if term.every > 1:
                self._after_prox[index] = (matrix.clone(), step_count)
        self._last_call = step_count
        self._versions = {id(p): p._version for p in self.parameters}

    @torch.no_grad()
    def hard_threshold_(self, step_of: dict[int, float]) -> int:
        """Remove, without shrinking anything else, what one prox step would remove.

        For zero-inducing penalties: every weight that ``prox_`` at this step would set to
        zero (whole groups, and single weights of L1 parts) is set to zero, the others keep
        their values. For the nuclear norm: singular values ``sigma_i <= step * strength``
        are truncated, the others kept (``W <- U_r S_r V_r^T``). Returns the number of
        structures (groups or singular values) removed.
        """
        removed = 0
        for index, term in enumerate(self.terms):
            step = self.step_for(term, step_of)
            if step == 0:
                continue
            matrix = term.grouping.gather()
            if isinstance(term.penalty, NuclearNorm):
                removed += _truncate_singular_values_(matrix, step * term.penalty.strength)
            elif term.penalty.induces_zeros:
                probe = matrix.clone()
                if isinstance(term.penalty, GroupLasso):
                    term.penalty.prox_(probe, step, self.group_weights.get(index))
                else:
                    term.penalty.prox_(probe, step)
                alive = matrix.abs().amax(dim=1) > 0
                matrix[probe == 0] = 0
                removed += int((alive & (matrix.abs().amax(dim=1) == 0)).sum())
            else:
                continue
            term.grouping.scatter_(matrix)
        return removed

    def state_dict(self) -> dict[str, Any]:
        """The strength multipliers and the attached controller's state."""
        state: dict[str, Any] = {"scales": dict(self.scales), "group_weights": dict(self.group_weights)}
        if self.controller is not None:
            state["controller"] = self.controller.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for rule, scale in state.get("scales", {}).items():
            self.set_scale(int(rule), scale)
        self.group_weights = {}
        for index, weights in state.get("group_weights", {}).items():  # absent from older checkpoints
            self.set_group_weights(int(index), weights)
        if self.controller is not None and "controller" in state:
            self.controller.load_state_dict(state["controller"])

    @torch.no_grad()
    def zero_small_groups_(self, threshold: float) -> int:
        """Set groups whose L2 norm is below ``threshold`` to exactly zero (SSL's final step).

        Only terms whose penalty induces zeros are touched; returns the number of groups zeroed.
        """
        zeroed = 0
        for term in self.terms:
            if not term.penalty.induces_zeros:
                continue
            matrix = term.grouping.gather()
            small = (matrix.norm(dim=1) < threshold) & (matrix.abs().amax(dim=1) > 0)
            if small.any():
                matrix[small] = 0
                term.grouping.scatter_(matrix)
                zeroed += int(small.sum())
        return zeroed

    @torch.no_grad()
    def structure(self) -> dict[str, dict[str, float]]:
        """Per-term structure statistics (zero-group fraction, rank) for logs and reports."""
        return {t.label: self.structure_of(i) for i, t in enumerate(self.terms)}

    @torch.no_grad()
    def structure_of(self, index: int) -> dict[str, float]:
        """Structure statistics of term ``index`` as its last prox left it.

        A term proxed every k > 1 steps is zeroed only on those steps; the gradient steps in
        between revive its zeroed groups and singular values slightly above zero, so reading
        the weights between two proxes would report full rank whatever the penalty does.
        While nothing but those gradient steps has touched the weights since the last
        ``prox_`` call (no fine-tuning, truncation or loading since: tracked by the
        parameters' in-place versions), the statistics come from the matrix right after the
        term's last prox; otherwise from the weights as they are.
        """
        term = self.terms[index]
        saved = self._after_prox.get(index)
        untouched = all(self._versions.get(id(p)) == p._version for p in term.grouping.parameters)
        if saved is not None and untouched and self._last_call - saved[1] < term.every:
            return term.penalty.structure(saved[0])
        return term.penalty.structure(term.grouping.gather())

    @property
    def parameters(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for term in self.terms:
            for p in term.grouping.parameters:
                seen.setdefault(id(p), p)
        return list(seen.values())


def _truncate_singular_values_(matrix: Tensor, threshold: float) -> int:
    """Keep the singular values above ``threshold`` unchanged and drop the rest, in place;
    zero rows and columns stay exactly zero. Returns how many non-zero values were dropped."""
    zero_rows = matrix.abs().amax(dim=1) == 0
    zero_cols = matrix.abs().amax(dim=0) == 0
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    drop = (s <= threshold) & (s > 0)
    if not drop.any():
        return 0
    out = (u * torch.where(drop, torch.zeros_like(s), s)) @ vh
    out[zero_rows] = 0
    out[:, zero_cols] = 0
    matrix.copy_(out)
    return int(drop.sum())
