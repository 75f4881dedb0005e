"""Compaction: plan (what to keep) -> surgery (new, smaller modules); factorization."""

from shrinkage.compact.api import apply_plan, compact, max_output_difference, plan_compaction
from shrinkage.compact.factorize import LayerFactorization, factorize, plan_factorization, rank_for_energy
from shrinkage.compact.plan import CompactionPlan, CompactOptions
from shrinkage.compact.serialize import load, save
from shrinkage.compact.surgery import SURGEONS, shrink
from shrinkage.layers import LoweredConv2d, SelectInputs

__all__ = [
    "SURGEONS",
    "CompactOptions",
    "CompactionPlan",
    "LoweredConv2d",
    "SelectInputs",
    "apply_plan",
    "compact",
    "factorize",
    "load",
    "save",
    "plan_factorization",
    "rank_for_energy",
    "LayerFactorization",
    "max_output_difference",
    "plan_compaction",
    "shrink",
]
