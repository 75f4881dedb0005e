"""``compact()``: a new, smaller model with the same outputs; the input is untouched."""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from shrinkage.compact.plan import CompactionPlan, CompactOptions, decide
from shrinkage.compact.surgery import add_bias, set_submodule, shrink
from shrinkage.errors import ShrinkageError
from shrinkage.graph.builder import build_channel_graph
from shrinkage.graph.rules import default_rules
from shrinkage.layers import HeadPrunedAttention, LoweredConv2d, SelectInputs

log = logging.getLogger(__name__)


def plan_compaction(
    model: nn.Module, example_inputs: tuple[Any, ...], options: CompactOptions | None = None
) -> CompactionPlan:
    """Trace ``model``, find its channel spaces and decide what can go (nothing is modified)."""
    options = options or CompactOptions()
    cg = build_channel_graph(
        model, example_inputs, default_rules(), leaf_modules=options.leaf_modules, allow_unknown=options.allow_unknown
    )
    plan = decide(cg)
    called = {str(n.target) for n in cg.gm.graph.nodes if n.op == "call_module"}
    _plan_input_selection(model, plan, options, called)
    return plan


def _shrunk_weight(model: nn.Module, name: str, plan: CompactionPlan) -> Tensor:
    w = model.get_submodule(name).weight.detach()
    for dim in (0, 1):
        mask = plan.keep.get((name, dim))
        if mask is not None:
            w = w.index_select(dim, mask.nonzero().flatten())
    return w


def _plan_input_selection(model: nn.Module, plan: CompactionPlan, options: CompactOptions, called: set[str]) -> None:
    """Unused inputs that could not be removed upstream: select them away, or lower the conv.

    Only layers the model calls as modules qualify: a Linear whose weight another module
    reads directly (``nn.MultiheadAttention.out_proj``) cannot be wrapped."""
    for name, m in model.named_modules():
        if name not in called:
            continue
        if isinstance(m, nn.Linear):
            w = _shrunk_weight(model, name, plan)
            used = w.ne(0).any(dim=0)
            if 0 < used.sum() and (~used).float().mean() >= options.select_inputs_min_fraction:
                plan.select_inputs[name] = used.nonzero().flatten()
        elif isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            w = _shrunk_weight(model, name, plan)
            if w.numel() == 0:
                continue  # a removed branch's layer: nothing left to select from
            cols_used = w.reshape(w.shape[0], -1).ne(0).any(dim=0)  # (C*kh*kw,)
            ch_used = cols_used.reshape(w.shape[1], -1).any(dim=1)
            if not cols_used.any():
                continue
            per_channel = cols_used.reshape(w.shape[1], -1)
            whole_channels_only = bool((per_channel.all(dim=1) | ~per_channel.any(dim=1)).all())
            if not whole_channels_only and (~cols_used).float().mean() >= options.lower_min_fraction:
                plan.lowered[name] = cols_used.nonzero().flatten()
            elif (~ch_used).float().mean() >= options.select_inputs_min_fraction:
                plan.select_inputs[name] = ch_used.nonzero().flatten()


def apply_plan(model: nn.Module, plan: CompactionPlan) -> nn.Module:
    """Build the compacted copy of ``model`` described by ``plan``."""
    per_module: dict[str, dict[int, Tensor]] = {}
    for (name, dim), mask in plan.keep.items():
        per_module.setdefault(name, {})[dim] = mask
    replaced = {name for name, keep in per_module.items() if not all(bool(m.all()) for m in keep.values())}
    new = _copy_except(model, replaced | set(plan.select_inputs) | set(plan.heads) | set(plan.lowered))
    for name, keep in per_module.items():
        if all(bool(mask.all()) for mask in keep.values()):
            continue
        set_submodule(new, name, shrink(name, new.get_submodule(name), keep))
    for name, delta in plan.bias_delta.items():
        out_mask = plan.keep.get((name, 0))
        add_bias(new.get_submodule(name), delta[out_mask] if out_mask is not None else delta)
    for name, idx in plan.select_inputs.items():
        layer = new.get_submodule(name)
        keep = torch.zeros(layer.weight.shape[1], dtype=torch.bool)
        keep[idx] = True
        dim = -1 if isinstance(layer, nn.Linear) else 1
        smaller = shrink(name, layer, {1: keep})
        wrapped = nn.Sequential(OrderedDict(select=SelectInputs(idx, dim), layer=smaller))
        set_submodule(new, name, wrapped.train(layer.training))
    for name, keep in plan.heads.items():
        set_submodule(new, name, HeadPrunedAttention.from_module(name, new.get_submodule(name), keep))
    for name, columns in plan.lowered.items():
        conv = new.get_submodule(name)
        set_submodule(new, name, LoweredConv2d(conv, columns).train(conv.training))
    return new


def _copy_except(model: nn.Module, replaced: set[str]) -> nn.Module:
    """``deepcopy(model)``, except that layers about to be replaced are not copied first
    (on VGG that is most of 0.5 GB). A layer registered under a second name is copied
    anyway: that other reference must not keep pointing into the original model."""
    seen: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        seen[id(m)] = seen.get(id(m), 0) + 1
    memo: dict[int, Any] = {}
    for name in replaced:
        m = model.get_submodule(name)
        if seen[id(m)] == 1:
            memo[id(m)] = m  # deepcopy returns it as is; set_submodule swaps it out right after
    return copy.deepcopy(model, memo)


def _outputs(model: nn.Module, example_inputs: tuple[Any, ...]) -> list[Tensor]:
    """The model's output tensors in eval mode; its train/eval flags are left as found."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return _leaves(model(*example_inputs))
    finally:
        for m, flag in flags:
            m.training = flag


def max_output_difference(a: nn.Module, b: nn.Module, example_inputs: tuple[Any, ...]) -> float:
    """Largest absolute difference between the two models' outputs (eval mode)."""
    return _largest_difference(_outputs(a, example_inputs), _outputs(b, example_inputs))


def _largest_difference(la: list[Tensor], lb: list[Tensor]) -> float:
    if len(la) != len(lb) or any(x.shape != y.shape for x, y in zip(la, lb, strict=True)):
        return float("inf")
    return max(((float((x - y).abs().max()) if x.numel() else 0.0) for x, y in zip(la, lb, strict=True)), default=0.0)


def _leaves(y: Any) -> list[Tensor]:
    if isinstance(y, Tensor):
        return [y]
    if isinstance(y, dict):
        return [t for v in y.values() for t in _leaves(v)]
    if isinstance(y, (tuple, list)):
        return [t for v in y for t in _leaves(v)]
    return []


def compact(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    options: CompactOptions | None = None,
    *,
    atol: float = 1e-4,
) -> nn.Module:
    """Return a new, smaller model whose outputs equal ``model``'s; ``model`` is untouched.

    Removes every channel (filter, neuron) whose structure the weights have zeroed, folds
    the constants of dead channels into the next layers' biases where that is exact, drops
    unused inputs and lowers convs with zeroed filter-shape columns to a smaller GEMM.
    The result is checked on ``example_inputs``; a difference above ``atol`` (relative to
    the output scale) raises, since it would mean a rule is wrong.
    """
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type != "cpu":
        # the plan's masks, folds and index sets are CPU tensors; deciding on a CPU copy
        # keeps every rule device-agnostic, and the result is moved back where it came from
        on_cpu = copy.deepcopy(model).cpu()
        inputs = tuple(x.cpu() if isinstance(x, Tensor) else x for x in example_inputs)
        return compact(on_cpu, inputs, options, atol=atol).to(device)
    plan = plan_compaction(model, example_inputs, options)
    new = apply_plan(model, plan)
    reference, got = _outputs(model, example_inputs), _outputs(new, example_inputs)
    scale = max([float(t.abs().max()) for t in reference if t.numel()] + [1.0])
    diff = _largest_difference(reference, got)
    if not diff <= atol * scale:
        raise ShrinkageError(f"compacted {type(model).__name__} differs from the original by {diff:.3g}; please report this")
    log.info("compacted %s: max output difference %.3g", type(model).__name__, diff)
    return new
