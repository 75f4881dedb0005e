"""shrinkage: train networks to be compressed, then make them genuinely smaller and faster.

Structured Sparsity Learning (Wen et al., 2016) and compression-aware training
(Alvarez & Salzmann, 2017): group Lasso / nuclear-norm penalties with exact proximal
steps, then removal of the zeroed structures and low-rank factorization.
"""

from shrinkage.budget import Achieved, Budget, BudgetError, PruneResult, RankCriterion, prune
from shrinkage.compact import (
    AttentionType,
    CompactOptions,
    HeadCounts,
    LayerType,
    WeightUse,
    channel_multiple,
    compact,
    factorize,
    load,
    plan_compaction,
    register_attention_type,
    register_layer_type,
    save,
)
from shrinkage.errors import ShrinkageError
from shrinkage.graph.capture import Capture
from shrinkage.quantization import quantize_int8  # torchao is imported only when it is called

__version__ = "0.1.0"

__all__ = [
    "Achieved",
    "Budget",
    "BudgetError",
    "PruneResult",
    "RankCriterion",
    "prune",
    "Capture",
    "LayerType",
    "WeightUse",
    "register_layer_type",
    "AttentionType",
    "HeadCounts",
    "register_attention_type",
    "channel_multiple",
    "CompactOptions", "ShrinkageError", "__version__", "compact", "factorize", "load", "plan_compaction",
    "quantize_int8", "save"]
