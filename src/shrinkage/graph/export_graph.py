"""Capture with ``torch.export``: the ATen-level program of a model, with parameter owners.

``torch.export`` sees through Python control flow that ``torch.fx`` symbolic tracing
cannot follow (Hugging Face models, most of timm), resolves in-place ops (a later use of
a mutated tensor points at the mutating node) and reduces every model to a small set of
ATen ops, so the channel rules (:mod:`shrinkage.graph.aten_rules`) are keyed on ops, not
on every Python function and module type. Surgery stays on modules: each parameter read
by the graph is a ``get_attr`` of its fully qualified name, so the op that reads
``layer1.0.conv1.weight`` is *owned* by the module ``layer1.0.conv1``, and the rule of
that op registers the slices of that module's parameters.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from shrinkage.errors import ConfigError, UnsupportedModuleError
from shrinkage.graph.attention_heads import find_head_units
from shrinkage.graph.builder import ChannelGraph, GraphBuilder, RuleSet, _Recorder, node_args
from shrinkage.graph.out_of_place import is_mutating, rewrite_out_of_place
from shrinkage.graph.outputs import output_tensors
from shrinkage.graph.spaces import Axis, Segment, Slice, SpaceTable, Use


@dataclass
class ExportChannelGraph(ChannelGraph):
    """A channel graph over the exported program: modules are looked up in the original
    model; ``owners`` maps an op node to the module whose weight it reads."""

    root: nn.Module | None = None
    owners: dict[str, str] = field(default_factory=dict)
    #: a module registered under several names -> its first name (``named_modules`` order)
    aliases: dict[str, str] = field(default_factory=dict)

    def module(self, name: str) -> nn.Module:
        assert self.root is not None
        return self.root.get_submodule(name)


class ExportGraphBuilder(GraphBuilder):
    """The walk of :class:`GraphBuilder` over ATen nodes; slices name the owning module."""

    g: ExportChannelGraph

    def __init__(self, graph: ExportChannelGraph, allow_unknown: bool) -> None:
        super().__init__(graph, allow_unknown)
        self._first_call: dict[str, fx.Node] = {}

    def param(self, arg: Any) -> tuple[str, str] | None:
        """``(module, attr)`` when ``arg`` reads a parameter or buffer of a module, else None."""
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            module, _, attr = _module_name(str(arg.target)).rpartition(".")
            return self.g.aliases.get(module, module), attr
        return None

    def owner(self, node: fx.Node) -> nn.Module | None:
        name = self.g.owners.get(node.name)
        return self.g.module(name) if name is not None else None

    def module(self, node: fx.Node) -> nn.Module:
        owner = self.owner(node)
        if owner is None:
            raise AssertionError(f"node {node.name} has no owning module")
        return owner

    def own(self, node: fx.Node, module: str) -> bool:
        """Record that ``node`` applies ``module``'s weight. False when an earlier node does
        too (the module is called again): then the channels of every call stay, since one
        set of rows cannot be cut two ways."""
        self.g.owners[node.name] = module
        first = self._first_call.setdefault(module, node)
        if first is node:
            return True
        for call in (first, node):
            self.pin(self.axis(layer_input(call)), f"input of '{module}', called more than once")
        self.pin(self.axis(first), f"output of '{module}', called more than once")
        if isinstance(self.g.values.get(first.name), (tuple, list)):
            self.pin(self.g.axes.get(f"{first.name}.0"), f"output of '{module}', called more than once")
        return False

    def new_space(self, node: fx.Node, size: int, dim: int, producers: Any = ()) -> Axis:
        sid = self.g.table.new(size, node.name)
        space = self.g.table.get(sid)
        module = self.g.owners.get(node.name, "")
        for attr, pdim in producers:
            space.producers.append(Slice(module, attr, pdim))
        return Axis(dim, (Segment(sid, 0, size),))

    def use(self, node: fx.Node, axis: Axis, attr: str, dim: int, *, consumer: bool, zero_kills: bool = False) -> None:
        module = self.g.owners[node.name]
        use = Use(module, node.name, Slice(module, attr, dim), axis, zero_kills)
        for root in dict.fromkeys(self.g.table.find(seg.space) for seg in axis.segments):
            space = self.g.table.get(root)
            (space.consumers if consumer else space.passthrough).append(use)

    def run(self, rules: RuleSet) -> None:
        self.g.head_units = list(find_head_units(self))
        inside = {name: u for u in self.g.head_units for name in u.inside}
        projection = {p.name: (u, role) for u in self.g.head_units for role, p in u.projections.items()}
        merged_by = {u.output_op.name: u for u in self.g.head_units if u.output_op is not None}
        node: fx.Node  # graph.nodes is untyped
        for node in self.g.gm.graph.nodes:
            out = self.g.values.get(node.name)
            if node.name in inside:
                unit = inside[node.name]
                unit.check(self, node)
                if node is unit.exit:
                    self.g.axes[node.name] = unit.merged(self, node)
                continue
            if node.name in merged_by:  # the output projection reads the merged heads
                unit = merged_by[node.name]
                source = layer_input(node)
                self.g.axes[source.name] = unit.merged(self, source)
            if node.op == "placeholder":
                axis = self._input_axis(node, out)
            elif node.op == "output":
                for arg in node.all_input_nodes:
                    self.pin(self.axis(arg), f"model output ({arg.name})")
                axis = None
            elif node.op != "call_function" or not _holds_tensor(out):
                axis = None  # parameters (their readers slice them), shape arithmetic, asserts
            elif not any(self.axis(a) for a in node.all_input_nodes) and not _reads_weight(self, node):
                axis = None  # computed from no channel tensor (ids, positions, masks)
            else:
                axis = rules.apply(self, node)
            if axis is not None:
                self.g.axes[node.name] = axis
            if node.name in projection:
                unit, role = projection[node.name]
                unit.after_projection(self, node, role)

    def _input_axis(self, node: fx.Node, value: Any) -> Axis | None:
        if not isinstance(value, torch.Tensor) or value.dim() < 2 or not value.is_floating_point():
            return None
        # (N, C, ...) for images and features; a 3-D input is (N, C, L) when a convolution
        # reads it first, else a sequence (N, T, C)
        dim = 1
        if value.dim() == 3:
            first = next(iter(node.users), None)
            dim = 1 if first is not None and _is_conv(first) else 2
        axis = self.new_space(node, value.shape[dim], dim)
        self.g.table.get(axis.segments[0].space).is_input = True
        return axis

    def unknown(self, node: fx.Node, what: str) -> Axis | None:
        if not self.allow_unknown:
            raise UnsupportedModuleError(
                f"no channel rule for {what} at graph node '{node.name}'; pass allow_unknown=True to leave "
                "the channels it touches untouched"
            )
        return super().unknown(node, what)

    def keep(self, node: fx.Node, why: str) -> Axis | None:
        """An op that mixes channels in a way no removal survives: every channel it reads
        stays, and its output's channels form a new space that stays too. Exact by
        construction, so used for known ops (attention products, channel slicing), not
        as a silent fallback for unknown ones."""
        for arg in self.tensor_inputs(node):
            self.pin(self.axis(arg), f"{why} ({node.name})")
        out = self.g.values.get(node.name)
        if isinstance(out, torch.Tensor) and out.dim() >= 1 and out.is_floating_point():
            axis = self.new_space(node, out.shape[_natural_dim(out)], _natural_dim(out))
            self.pin(axis, f"{why} ({node.name})")
            return axis
        return None


def module_aliases(model: nn.Module) -> dict[str, str]:
    """Every other name of a module registered under several names -> its first name."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if id(m) in first and first[id(m)] != name:
            aliases[name] = first[id(m)]
        first.setdefault(id(m), name)
    return aliases


def node_owner(graph: ChannelGraph, node: fx.Node) -> str | None:
    """The module whose weight ``node`` applies: the owner of an ATen op, or the module a
    torch.fx ``call_module`` node calls."""
    if isinstance(graph, ExportChannelGraph):
        return graph.owners.get(node.name)
    return str(node.target) if node.op == "call_module" else None


def layer_input(node: fx.Node) -> fx.Node:
    """The activation a layer op reads: argument 0, except ``addmm(bias, x, weight)``."""
    packet = getattr(node.target, "overloadpacket", None)
    args = node_args(node)
    activation: fx.Node = args[1] if packet is torch.ops.aten.addmm else args[0]
    return activation


def called_as_module(graph: ChannelGraph, node: fx.Node) -> bool:
    """Whether ``node`` is the whole forward of its owner (so the owner can be replaced
    by another module computing the same), not an op of a parent reading its weight."""
    if not isinstance(graph, ExportChannelGraph):
        return node.op == "call_module"
    owner = graph.owners.get(node.name)
    stack = node.meta.get("nn_module_stack") or {}
    innermost = next(reversed(stack.values()), None) if stack else None
    return owner is not None and innermost is not None and _fqn(innermost[0]) == owner


def _fqn(path: str) -> str:
    """``nn_module_stack`` paths may carry ``L['self']``-style prefixes; keep the dotted name."""
    return _module_name(path.replace("L['self'].", "").replace("L__self___", "").strip("."))


def _module_name(exported: str) -> str:
    """The name in the user's model of a name in the exported wrapper (``model.`` prefix)."""
    return exported[len("model.") :] if exported.startswith("model.") else exported.removeprefix("model")


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value)


def _is_conv(node: fx.Node) -> bool:
    packet = getattr(node.target, "overloadpacket", None)
    return packet in (torch.ops.aten.conv1d, torch.ops.aten.conv2d, torch.ops.aten.conv3d, torch.ops.aten.convolution)


def _reads_weight(b: ExportGraphBuilder, node: fx.Node) -> bool:
    return any(b.param(a) is not None for a in node.args if isinstance(a, fx.Node))


def _natural_dim(t: torch.Tensor) -> int:
    """Where a tensor's channels usually are: dim 1 of an image-like (N, C, ...) tensor,
    the last dim of a sequence (N, T, C) or a feature matrix."""
    return 1 if t.dim() >= 4 else t.dim() - 1


def export_model(model: nn.Module, example_inputs: tuple[Any, ...]) -> fx.GraphModule:
    """The ATen graph of ``model`` in eval mode, with parameters as ``get_attr`` nodes.

    In-place ops are rewritten out of place where no alias can see them
    (:mod:`shrinkage.graph.out_of_place`), otherwise functionalized the general way
    (``run_decompositions`` with an empty table keeps every op, only rewrites mutation,
    but traces the model again), so each node is one value."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(_TensorOutputs(model), example_inputs, strict=False)
            gm = program.module()
            if any(is_mutating(n) for n in gm.graph.nodes) and not rewrite_out_of_place(gm):
                gm = program.run_decompositions({}).module()
    except Exception as exc:  # export raises many types; keep its first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModuleError(f"cannot export {type(model).__name__} with torch.export: {first}") from exc
    finally:
        for m, flag in flags:
            m.training = flag
    # the input guards of the exported module check shapes, which the recorded run does not
    # need (and which ``run_decompositions`` can leave without their function)
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target) == "_guards_fn" and not node.users:
            gm.graph.erase_node(node)
    gm.recompile()
    return gm


class _TensorOutputs(nn.Module):
    """``model`` with its outputs reduced to their tensors. A model may return objects
    export cannot flatten (a Hugging Face model's key/value cache); what compaction must
    keep equal is the tensors. The model is registered as ``model``, so parameter names
    in the graph carry that prefix (see :func:`_module_name`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> tuple[torch.Tensor, ...]:
        return tuple(output_tensors(self.model(*args)))


def build_export_graph(
    model: nn.Module, example_inputs: tuple[Any, ...], rules: RuleSet, *, allow_unknown: bool = False
) -> ExportChannelGraph:
    """Export ``model`` (left unchanged), record every value on ``example_inputs`` and find
    its channel spaces with the ATen ``rules``."""
    gm = export_model(model, example_inputs)
    cg = ExportChannelGraph(
        gm=gm, table=SpaceTable(), values=_record(gm, example_inputs), rules=rules, root=model,
        aliases=module_aliases(model),
    )  # fmt: skip
    ExportGraphBuilder(cg, allow_unknown).run(rules)
    return cg


def _record(gm: fx.GraphModule, example_inputs: tuple[Any, ...]) -> dict[str, Any]:
    recorder = _Recorder(gm)
    flat = torch.utils._pytree.tree_leaves(example_inputs)
    with torch.no_grad():
        recorder.run(*flat)  # a failing node raises ExampleInputError naming it
    return recorder.values


def recorded_again(graph: ExportChannelGraph, model: nn.Module, example_inputs: tuple[Any, ...]) -> ExportChannelGraph:
    """``graph`` (a capture of ``model``) with its values recorded again on ``model``'s
    current weights: the spaces depend on the architecture and the input shapes only, the
    values (constants to fold) on the weights. The exported program reads the model's own
    parameter tensors, so weights changed in place since the capture are seen; a capture
    of another model is refused."""
    mine = {id(t) for t in model.parameters()} | {id(t) for t in model.buffers()}
    if graph.root is not model or any(id(t) not in mine for t in graph.gm.parameters()):
        raise ConfigError(f"the channel graph given is not a capture of this {type(model).__name__}")
    return dataclasses.replace(graph, values=_record(graph.gm, example_inputs))
