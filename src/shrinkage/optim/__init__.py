"""Optimization: rules binding penalties to layers, the proximal wrapper, masks, and the
controller that trains to a MAC budget."""

from shrinkage.optim.controller import BudgetController, ControllerConfig, attach_controller
from shrinkage.optim.estimators import ExactMacEstimator, MacEstimator, StructureMacEstimator
from shrinkage.optim.masks import ZeroMask
from shrinkage.optim.proximal import ProximalOptimizer, ThresholdPolicy
from shrinkage.optim.regularizer import Regularizer, Term
from shrinkage.optim.rules import AllOf, ModuleType, NamePattern, Predicate, Rule, Selector

__all__ = [
    "AllOf",
    "BudgetController",
    "ControllerConfig",
    "ExactMacEstimator",
    "MacEstimator",
    "ModuleType",
    "NamePattern",
    "Predicate",
    "ProximalOptimizer",
    "Regularizer",
    "Rule",
    "Selector",
    "StructureMacEstimator",
    "Term",
    "ThresholdPolicy",
    "ZeroMask",
    "attach_controller",
]
