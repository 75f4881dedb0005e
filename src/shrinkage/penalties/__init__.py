"""Penalties with a differentiable value and an exact in-place proximal map."""

from shrinkage.penalties.base import Penalty
from shrinkage.penalties.group_lasso import GroupLasso
from shrinkage.penalties.l1 import L1
from shrinkage.penalties.nuclear_norm import NuclearNorm, SvdMethod
from shrinkage.penalties.sparse_group_lasso import SparseGroupLasso

__all__ = ["GroupLasso", "L1", "NuclearNorm", "Penalty", "SparseGroupLasso", "SvdMethod"]
