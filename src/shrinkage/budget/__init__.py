"""Budgets: a target in (MACs, parameters, latency), the most accurate model meeting it out."""

from shrinkage.budget.importance import GroupNorm, Importance, Taylor
from shrinkage.budget.prune import BudgetError, PruneResult, prune
from shrinkage.budget.ranks import RankCriterion
from shrinkage.budget.spec import Achieved, Budget

__all__ = [
    "Achieved", "Budget", "BudgetError", "GroupNorm", "Importance", "PruneResult", "RankCriterion", "Taylor", "prune",
]
