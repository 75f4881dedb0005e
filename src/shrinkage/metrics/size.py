"""Model size: parameter counts and multiply-accumulate (MAC) counts.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` rather than hand-written
per-layer formulas, so any layer the compaction step produces (factorized convs,
grouped convs, plain matmuls) is counted by the same rules as the dense model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from shrinkage.errors import ConfigError
from shrinkage.metrics._common import eval_mode, require_module

log = logging.getLogger(__name__)

# Every operator FlopCounterMode has a formula for (mm, addmm, bmm, convolution,
# attention) counts one multiply and one add per MAC, so halving is exact.
_FLOPS_PER_MAC = 2


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one forward pass.

    Attributes:
        total: MACs of the whole forward pass.
        per_module: MACs per module, keyed by ``model.named_modules()`` names (the
            root is ``""``). Counts are inclusive: a container's entry contains its
            children's MACs, so do not sum over all entries. Modules that performed
            no counted operation are absent.
        per_operator: total MACs per aten operator (``"aten.convolution"`` ...).
    """

    total: int
    per_module: dict[str, int] = field(default_factory=dict)
    per_operator: dict[str, int] = field(default_factory=dict)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters, each shared (tied) parameter counted once.

    ``nn.Module.parameters()`` already yields a tied ``Parameter`` object once; we
    additionally deduplicate by identity so the rule is explicit here, not an
    accident of the default ``remove_duplicate=True``.
    """
    require_module(model, "count_parameters")
    unique = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}
    return sum(p.numel() for p in unique.values())


def _strip_root(name: str, root: str) -> str | None:
    """Map a flop-counter module name (``Net.features.0``) to ``features.0``."""
    if name == root:
        return ""
    if name.startswith(root + "."):
        return name[len(root) + 1 :]
    return None


def _cpu_attention_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """Scaled dot-product attention on the CPU: ``Q K^T`` and ``weights V``, 2 FLOPs per MAC.
    (torch's counter has formulas for the GPU kernels only.)"""
    *batch, length, dim = query
    source, value_dim = key[-2], value[-1]
    n = 1
    for b in batch:
        n *= b
    return 2 * n * length * source * (dim + value_dim)


_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def count_macs(model: nn.Module, example_inputs: tuple[object, ...] | Tensor) -> MacCount:
    """Count the MACs of ``model(*example_inputs)``.

    The pass runs under ``torch.no_grad()`` in eval mode (so BatchNorm/Dropout take
    their inference path); each submodule's training flag is restored afterwards.
    A lone tensor is accepted as a one-element tuple. The counts depend on the input
    shape, batch size included.
    """
    require_module(model, "count_macs")
    if isinstance(example_inputs, Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, tuple):
        raise ConfigError(
            f"count_macs: example_inputs must be a tuple of inputs, got {type(example_inputs).__name__}"
        )
    counter = FlopCounterMode(display=False, custom_mapping=_ATTENTION_FLOPS)
    # nn.MultiheadAttention's fused inference kernel is invisible to the flop counter
    # (it would count 0); its regular path runs ops the counter knows
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with eval_mode(model), torch.no_grad(), counter:
            model(*example_inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    flops = counter.get_flop_counts()
    # The flop counter names the root module after its class; named_modules() calls it "".
    root = type(model).__name__
    per_module: dict[str, int] = {}
    for name, by_op in flops.items():
        if name == "Global":
            continue
        stripped = _strip_root(name, root)
        if stripped is None:
            log.debug("count_macs: skipping flop entry %r outside the model", name)
            continue
        per_module[stripped] = sum(by_op.values()) // _FLOPS_PER_MAC
    per_operator = {
        str(op): value // _FLOPS_PER_MAC for op, value in flops.get("Global", {}).items()
    }
    total = counter.get_total_flops() // _FLOPS_PER_MAC
    log.debug("count_macs: %s -> %d MACs", root, total)
    return MacCount(total=total, per_module=per_module, per_operator=per_operator)
