"""Model size: parameter counts and multiply-accumulate (MAC) counts.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` rather than hand-written
per-layer formulas, so any layer the compaction step produces (factorized convs,
grouped convs, plain matmuls) is counted by the same rules as the dense model.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
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


def count_macs(
    model: nn.Module, example_inputs: tuple[object, ...] | Tensor, layers: Collection[str] | None = None
) -> MacCount:
    """Count the MACs of ``model(*example_inputs)``.

    The pass runs under ``torch.no_grad()`` in eval mode (so BatchNorm/Dropout take
    their inference path); each submodule's training flag is restored afterwards.
    A lone tensor is accepted as a one-element tuple. The counts depend on the input
    shape, batch size included.

    ``layers``: count only the MACs computed inside the modules of these names (and their
    submodules); a name the model no longer has counts 0. Containers then hold the sum of
    the named modules inside them, the root the scoped total. Names, not types, so that a
    layer compaction replaced (a conv lowered to a GEMM, factorized into two) still
    counts under the name the dense model gave it (:meth:`shrinkage.Budget.mac_layers`).
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
    by_module: dict[str, dict[Any, int]] = {}
    for name, by_op in flops.items():
        if name == "Global":
            continue
        stripped = _strip_root(name, root)
        if stripped is None:
            log.debug("count_macs: skipping flop entry %r outside the model", name)
            continue
        by_module[stripped] = dict(by_op)
    if layers is not None:
        return _scoped(by_module, layers)
    per_module = {name: sum(by_op.values()) // _FLOPS_PER_MAC for name, by_op in by_module.items()}
    per_operator = {
        str(op): value // _FLOPS_PER_MAC for op, value in flops.get("Global", {}).items()
    }
    total = counter.get_total_flops() // _FLOPS_PER_MAC
    log.debug("count_macs: %s -> %d MACs", root, total)
    return MacCount(total=total, per_module=per_module, per_operator=per_operator)


def _inside(name: str, scope: str) -> bool:
    """``name`` is the module ``scope`` or one of its submodules (``""`` is the root)."""
    return scope == "" or name == scope or name.startswith(scope + ".")


def _scoped(by_module: dict[str, dict[Any, int]], layers: Collection[str]) -> MacCount:
    """The counts of :func:`count_macs` restricted to the modules named in ``layers``."""
    names = set(layers)
    # a named module inside another named one is already in that one's inclusive count
    outer = sorted(n for n in names if not any(o != n and _inside(n, o) for o in names))
    counted = [n for n in outer if n in by_module]
    per_module: dict[str, int] = {}
    for name, by_op in by_module.items():
        if any(_inside(name, s) for s in counted):  # inside the scope: all of it counts
            per_module[name] = sum(by_op.values()) // _FLOPS_PER_MAC
        else:  # a container of scoped modules (or of none): their sum
            inner = sum(sum(by_module[s].values()) for s in counted if _inside(s, name))
            if inner:
                per_module[name] = inner // _FLOPS_PER_MAC
    per_operator: dict[str, int] = {}
    for scope in counted:
        for op, value in by_module[scope].items():
            per_operator[str(op)] = per_operator.get(str(op), 0) + value // _FLOPS_PER_MAC
    total = sum(sum(by_module[s].values()) for s in counted) // _FLOPS_PER_MAC
    return MacCount(total=total, per_module=per_module, per_operator=per_operator)
