"""A model's regularization: rules resolved once into (grouping, penalty) terms."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from shrinkage.errors import ConfigError
from shrinkage.groups.base import Grouping
from shrinkage.groups.kinds import GroupKind
from shrinkage.optim.rules import Rule
from shrinkage.penalties.base import Penalty

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


class Regularizer:
    """``sum_terms penalty(grouping)`` over a model, with value, prox and statistics."""

    def __init__(self, model: nn.Module, rules: Sequence[Rule]) -> None:
        terms: list[Term] = []
        for i, rule in enumerate(rules):
            chosen = rule.chosen(model)
            if not chosen:
                raise ConfigError(f"regularization.rules[{i}] ({rule.select}) matches no module of the model")
            for grouping in rule.groups.build_for(model, chosen):
                terms.append(Term(i, grouping, rule.penalty, rule.groups, rule.every))
        self.terms: tuple[Term, ...] = tuple(terms)
        log.info("regularizer: %d terms from %d rules", len(self.terms), len(rules))

    def value(self) -> Tensor:
        """Differentiable total penalty (add it to the loss in the subgradient mode)."""
        total: Tensor | None = None
        for term in self.terms:
            v = term.penalty.value(term.grouping.gather())
            total = v if total is None else total + v
        return total if total is not None else torch.zeros(())

    @torch.no_grad()
    def prox_(self, step_of: dict[int, float], step_count: int = 1) -> None:
        """Apply every term's proximal map with ``step = lr`` of its parameters.

        ``step_of`` maps ``id(parameter)`` to its learning rate. Terms with ``every = k``
        run on every k-th call with a k-times larger step.
        """
        for term in self.terms:
            if step_count % term.every:
                continue
            lrs = {step_of[id(p)] for p in term.grouping.parameters}
            if len(lrs) != 1:
                raise ConfigError(
                    f"term {term.label}: its parameters have different learning rates {sorted(lrs)}; "
                    "put them in one optimizer parameter group"
                )
            matrix = term.grouping.gather()
            term.penalty.prox_(matrix, lrs.pop() * term.every)
            term.grouping.scatter_(matrix)

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
        return {t.label: t.penalty.structure(t.grouping.gather()) for t in self.terms}

    @property
    def parameters(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for term in self.terms:
            for p in term.grouping.parameters:
                seen.setdefault(id(p), p)
        return list(seen.values())
