"""``compact()``: a new, smaller model with the same outputs; the input is untouched."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import Tensor, fx, nn

from shrinkage.compact import layer_forms as _layer_forms  # noqa: F401  (registers the conv/linear forms)
from shrinkage.compact.attention_types import attention_type_of
from shrinkage.compact.forms import choose_form, forms_for, mark
from shrinkage.compact.layer_types import layer_type_of
from shrinkage.compact.plan import CompactionPlan, CompactOptions, decide
from shrinkage.compact.surgery import add_bias, shrink, slice_free_tensors
from shrinkage.compact.surgery import set_submodule as _set_submodule
from shrinkage.errors import ShrinkageError, UnsupportedModuleError
from shrinkage.graph.builder import ChannelGraph
from shrinkage.graph.capture import capture_channel_graph, capture_used
from shrinkage.graph.export_graph import ExportChannelGraph, called_as_module, node_owner, recorded_again
from shrinkage.graph.outputs import output_tensors
from shrinkage.integrations.huggingface import sync_config_if_possible
from shrinkage.layers import HeadPrunedAttention

log = logging.getLogger(__name__)


def plan_compaction(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    options: CompactOptions | None = None,
    *,
    device: torch.device | str | None = None,
    graph: ChannelGraph | None = None,
) -> CompactionPlan:
    """Trace ``model``, find its channel spaces, decide what can go and choose each
    layer's form (nothing is modified). Forms are timed on ``device`` (default: the
    model's) when the policy measures. ``graph``: an earlier capture of this very model
    (:func:`~shrinkage.graph.capture.capture_channel_graph`) whose weights may have
    changed in place since, reused instead of capturing again (see :func:`compact`)."""
    options = options or CompactOptions()
    if isinstance(graph, ExportChannelGraph):
        cg: ChannelGraph = recorded_again(graph, model, example_inputs)
    else:  # a torch.fx capture records in-place ops as it traces: it is captured again
        cg = capture_channel_graph(
            model, example_inputs, options.capture, leaf_modules=options.leaf_modules,
            allow_unknown=options.allow_unknown,
        )  # fmt: skip
    plan = decide(cg, options.round_to, free_tensors=True)
    plan.capture = capture_used(cg)
    plan.model_outputs = cg.model_outputs
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    _plan_forms(model, cg, plan, options, torch.device(device))
    return plan


def _compacted_layer(model: nn.Module, name: str, plan: CompactionPlan) -> nn.Module:
    """The layer as channel removal leaves it (shrunk, folded constants in its bias): the
    plain form, and what every other form of it is built from. Never shares tensors."""
    module = model.get_submodule(name)
    keep = {dim: mask for (layer, dim), mask in plan.keep.items() if layer == name}
    layer = shrink(name, module, keep) if any(not bool(m.all()) for m in keep.values()) else copy.deepcopy(module)
    delta = plan.bias_delta.get(name)
    if delta is not None:
        out_mask = plan.keep.get((name, 0))
        add_bias(layer, delta[out_mask] if out_mask is not None else delta)
    return layer


def _recorded_input(cg: ChannelGraph, node: fx.Node, plan: CompactionPlan, name: str) -> Tensor | None:
    """What the compacted layer reads on the example inputs: the recorded input of the
    original, restricted to the inputs channel removal keeps."""
    arg = node.args[0] if node.args else None
    x = cg.values.get(arg.name) if isinstance(arg, fx.Node) else None
    if not isinstance(x, Tensor):
        return None
    module = cg.module(name)
    depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups == module.in_channels > 1
    mask = plan.keep.get((name, 0 if depthwise else 1))  # a depthwise conv's inputs are its outputs
    if mask is not None and not bool(mask.all()):
        layer_type = layer_type_of(module)
        dim = layer_type.input_dim if layer_type is not None else 1
        x = x.index_select(dim, mask.nonzero().flatten())
    return x


def _plan_forms(
    model: nn.Module, cg: ChannelGraph, plan: CompactionPlan, options: CompactOptions, device: torch.device
) -> None:
    """Every layer the graph calls that has several exact forms gets the one ``options``'
    policy chooses, timed on the layer's recorded input. Only layers called as modules
    qualify: a Linear whose weight another module reads directly
    (``nn.MultiheadAttention.out_proj``) cannot be replaced."""
    first_call: dict[str, fx.Node] = {}
    for node in cg.gm.graph.nodes:
        owner = node_owner(cg, node)
        if owner is not None and called_as_module(cg, node):
            first_call.setdefault(owner, node)
    policy = options.policy()
    for name, node in first_call.items():
        if not forms_for(model.get_submodule(name)) or name in plan.heads:
            continue
        x = _recorded_input(cg, node, plan, name)
        if x is None:
            continue
        layer = _compacted_layer(model, name, plan)
        weight = getattr(layer, "weight", None)
        chosen = None
        if forms_for(layer) and not (isinstance(weight, Tensor) and weight.numel() == 0):
            # (a removed branch's layer, a ZeroWidthConv or a Linear of nothing, has one form only)
            chosen = choose_form(layer, x, options.form_context(name), policy, device)
        if chosen is not None:
            plan.layers[name], plan.forms[name] = chosen
        elif any(not bool(mask.all()) for (owner, _), mask in plan.keep.items() if owner == name):
            # the plain form, shrunk already: apply_plan takes it. (An unshrunk layer is a
            # deep copy of its own, which would untie a weight shared with another module.)
            plan.built[name] = layer


def apply_plan(model: nn.Module, plan: CompactionPlan) -> nn.Module:
    """Build the compacted copy of ``model`` described by ``plan``."""
    per_module: dict[str, dict[int, Tensor]] = {}
    for (name, dim), mask in plan.keep.items():
        per_module.setdefault(name, {})[dim] = mask
    shrunk = {name for name, keep in per_module.items() if not all(bool(m.all()) for m in keep.values())}
    # layers built while planning (shrunk, bias folded) go into this model as they are, once
    built, plan.built = plan.built, {}
    new = _copy_except(model, shrunk | set(plan.heads) | set(plan.layers) | set(built))
    slice_free_tensors(new, plan.free_tensors)  # their owners are not layer types: copied above, never replaced
    aliases = _other_names(model)

    def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
        # a layer registered under several names is replaced under all of them
        for each in (name, *aliases.get(name, ())):
            _set_submodule(root, each, module)

    for name, layer in built.items():
        set_submodule(new, name, layer.train(model.get_submodule(name).training))
    for name in shrunk - set(plan.layers) - set(built):
        set_submodule(new, name, shrink(name, new.get_submodule(name), per_module[name]))
    for name, delta in plan.bias_delta.items():
        if name in plan.layers or name in built:
            continue  # its chosen form was built from the layer with the bias folded in
        out_mask = plan.keep.get((name, 0))
        add_bias(new.get_submodule(name), delta[out_mask] if out_mask is not None else delta)
    for name, keep in plan.heads.items():
        set_submodule(new, name, HeadPrunedAttention.from_module(name, new.get_submodule(name), keep))
    for name, kept_kv in plan.attention_heads.items():
        attention = new.get_submodule(name)
        attention_type = attention_type_of(attention)
        assert attention_type is not None
        group = attention_type.counts(model.get_submodule(name)).group
        attention_type.set_counts(attention, int(kept_kv.sum()) * group, int(kept_kv.sum()))
    for name, layer in plan.layers.items():
        chosen = copy.deepcopy(layer).train(model.get_submodule(name).training)
        set_submodule(new, name, mark(chosen, plan.forms[name]))
    return new


def _other_names(model: nn.Module) -> dict[str, list[str]]:
    """First name of a module registered under several names -> its other names."""
    names: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), []).append(name)
    return {found[0]: found[1:] for found in names.values() if len(found) > 1}


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
            return output_tensors(model(*example_inputs))
    finally:
        for m, flag in flags:
            m.training = flag


def _refuse_hooks(model: nn.Module) -> None:
    """A forward hook computes something compaction cannot see or shrink: refuse, naming it."""
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            raise UnsupportedModuleError(
                f"module '{name or type(model).__name__}' has forward hooks, which compaction cannot follow: "
                "remove them before compact() and register them on the compacted model"
            )


def _check_train_mode(model: nn.Module, new: nn.Module, example_inputs: tuple[Any, ...], atol: float) -> None:
    """A model in train mode must also match in train mode (same random state for both),
    or compaction refuses: batch statistics of a folded constant channel or dropout over
    fewer channels differ from the original's. Running statistics are left as found."""

    def run(m: nn.Module) -> list[Tensor]:
        saved = [(b, b.detach().clone()) for b in m.buffers()]
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return output_tensors(m(*example_inputs))
        finally:
            with torch.no_grad():
                for b, value in saved:
                    b.copy_(value)

    reference, got = run(model), run(new)
    scale = max([float(t.abs().max()) for t in reference if t.numel()] + [1.0])
    if not _largest_difference(reference, got) <= atol * scale:
        raise UnsupportedModuleError(
            f"compacted {type(model).__name__} matches in eval mode but not in train mode (batch statistics of "
            "folded channels or dropout over fewer channels differ): call model.eval() before compact()"
        )


def max_output_difference(a: nn.Module, b: nn.Module, example_inputs: tuple[Any, ...]) -> float:
    """Largest absolute difference between the two models' outputs (eval mode)."""
    return _largest_difference(_outputs(a, example_inputs), _outputs(b, example_inputs))


def _largest_difference(la: list[Tensor], lb: list[Tensor]) -> float:
    if len(la) != len(lb) or any(x.shape != y.shape for x, y in zip(la, lb, strict=True)):
        return float("inf")
    return max(((float((x - y).abs().max()) if x.numel() else 0.0) for x, y in zip(la, lb, strict=True)), default=0.0)


def compact(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    options: CompactOptions | None = None,
    *,
    atol: float = 1e-4,
    graph: ChannelGraph | None = None,
) -> nn.Module:
    """Return a new, smaller model whose outputs equal ``model``'s; ``model`` is untouched.

    Removes every channel (filter, neuron) whose structure the weights have zeroed, folds
    the constants of dead channels into the next layers' biases where that is exact, and
    gives each layer with zeroed inputs or filter-shape columns the exact form the
    options' policy chooses (see :mod:`shrinkage.compact.forms`): by default the fastest
    on the layer's input shape on the model's device. Each such layer carries its
    :class:`~shrinkage.compact.choice.FormChoice` (``form_choices(result)`` lists them).
    The result is checked on ``example_inputs``; a difference above ``atol`` (relative to
    the output scale) raises, since it would mean a rule is wrong.

    ``graph``: a capture of this model on inputs of these shapes, made once and reused by
    every call (a selection compacting the same model under many zero patterns): the
    channel spaces depend on the architecture only, so only the values are recorded again.
    """
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type != "cpu":
        # the plan's masks, folds and index sets are CPU tensors; deciding on a CPU copy
        # keeps every rule device-agnostic (forms are still timed on the model's device),
        # and the result is moved back where it came from
        on_cpu = copy.deepcopy(model).cpu()
        inputs = tuple(x.cpu() if isinstance(x, Tensor) else x for x in example_inputs)
        return _compact(on_cpu, inputs, options, atol, device).to(device)  # a copy: captured anew
    return _compact(model, example_inputs, options, atol, device, graph)


def _compact(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    options: CompactOptions | None,
    atol: float,
    device: torch.device,
    graph: ChannelGraph | None = None,
) -> nn.Module:
    _refuse_hooks(model)
    plan = plan_compaction(model, example_inputs, options, device=device, graph=graph)
    new = apply_plan(model, plan)
    # the capture may have run the model on these inputs already (torch.fx checks its trace)
    reference = plan.model_outputs if plan.model_outputs is not None else _outputs(model, example_inputs)
    got = _outputs(new, example_inputs)
    scale = max([float(t.abs().max()) for t in reference if t.numel()] + [1.0])
    diff = _largest_difference(reference, got)
    if not diff <= atol * scale:
        raise ShrinkageError(
            f"compacted {type(model).__name__} differs from the original by {diff:.3g}; please report this"
        )
    if any(m.training for m in model.modules()):
        _check_train_mode(model, new, example_inputs, atol)
    log.info(
        "compacted %s (captured with %s): max output difference %.3g", type(model).__name__, plan.capture.value, diff
    )
    for name, choice in plan.forms.items():
        log.info("layer %s: form %s (%s)", name, choice.chosen, choice.by)
    why_not = sync_config_if_possible(new)  # a transformers model's config states its new sizes
    if why_not is not None:
        # every model without a config gets this reason too: worth a line only when asked for
        log.debug("config of %s left as it was: %s", type(model).__name__, why_not)
    return new
