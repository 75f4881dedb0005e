"""Optimization: rules binding penalties to layers, the proximal wrapper, masks."""

from shrinkage.optim.masks import ZeroMask
from shrinkage.optim.proximal import ProximalOptimizer
from shrinkage.optim.regularizer import Regularizer, Term
from shrinkage.optim.rules import AllOf, ModuleType, NamePattern, Predicate, Rule, Selector

__all__ = [
    "AllOf",
    "ModuleType",
    "NamePattern",
    "Predicate",
    "ProximalOptimizer",
    "Regularizer",
    "Rule",
    "Selector",
    "Term",
    "ZeroMask",
]
