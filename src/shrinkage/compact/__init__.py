"""Compaction: plan (what to keep) -> surgery (new, smaller modules); factorization."""

from shrinkage.compact.alignment import channel_multiple
from shrinkage.compact.api import apply_plan, compact, max_output_difference, plan_compaction
from shrinkage.compact.attention_types import AttentionType, HeadCounts, register_attention_type
from shrinkage.compact.choice import ByMacs, FormChoice, FormPolicy, Measured, default_policy, set_default_policy
from shrinkage.compact.factorize import LayerFactorization, factorize, plan_factorization, rank_for_energy
from shrinkage.compact.forms import FormContext, LayerForm, form_choices, register_form
from shrinkage.compact.layer_types import LayerType, WeightUse, layer_type_of, register_layer_type
from shrinkage.compact.plan import CompactionPlan, CompactOptions
from shrinkage.compact.serialize import load, save
from shrinkage.compact.sparse import magnitude_sparsify, matched_sparsity, sparsify, weight_sparsity
from shrinkage.compact.surgery import shrink
from shrinkage.layers import CroppedConv2d, LoweredConv2d, SelectInputs

__all__ = [
    "channel_multiple",
    "AttentionType",
    "HeadCounts",
    "register_attention_type",
    "LayerType",
    "WeightUse",
    "layer_type_of",
    "register_layer_type",
    "ByMacs",
    "CompactOptions",
    "CompactionPlan",
    "CroppedConv2d",
    "FormChoice",
    "FormContext",
    "FormPolicy",
    "LayerForm",
    "LoweredConv2d",
    "Measured",
    "SelectInputs",
    "apply_plan",
    "compact",
    "default_policy",
    "factorize",
    "form_choices",
    "load",
    "magnitude_sparsify",
    "matched_sparsity",
    "sparsify",
    "weight_sparsity",
    "save",
    "plan_factorization",
    "rank_for_energy",
    "register_form",
    "LayerFactorization",
    "max_output_difference",
    "plan_compaction",
    "set_default_policy",
    "shrink",
]
