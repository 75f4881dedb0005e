"""Build the channel graph of a model: trace it, record values, apply per-op rules.

Tracing uses ``torch.fx`` symbolic tracing: it is fast (milliseconds for a ResNet-50,
where ``torch.export`` takes seconds), keeps module boundaries as ``call_module``
nodes (so rules and surgery speak in module names users know), and custom modules
can be declared leaves. One concrete run on the example inputs records every
intermediate tensor: shapes for the reshape rules and the exact values that decide
whether a dead channel's constant can be folded into its consumers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from shrinkage.errors import UnsupportedModuleError
from shrinkage.graph.spaces import Axis, Segment, Slice, SpaceTable, Use


class _Tracer(fx.Tracer):
    def __init__(self, leaves: tuple[type[nn.Module], ...], ruled: frozenset[type[nn.Module]]) -> None:
        super().__init__()
        self._leaves = leaves
        self._ruled = ruled

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # a type with a rule is one op; its subclasses may compute something else, so only
        # the exact type (or an explicitly declared leaf) stops the tracer
        return isinstance(m, self._leaves) or type(m) in self._ruled or super().is_leaf_module(m, qualname)


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


@dataclass
class ChannelGraph:
    """The traced model, its recorded values and the channel spaces found by the rules."""

    gm: fx.GraphModule
    table: SpaceTable
    axes: dict[str, Axis] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    #: attention modules whose per-head weights the model reads: their heads all stay
    heads_fixed: set[str] = field(default_factory=set)
    #: the rules the spaces were found with (compaction asks them which ops run on zero channels)
    rules: RuleSet | None = None

    def module(self, name: str) -> nn.Module:
        return self.gm.get_submodule(name)


def channel_positions(graph: ChannelGraph, use: Use, root: int) -> list[tuple[Tensor, Tensor]]:
    """Where the channels of space ``root`` sit along ``use``'s dim, one entry per segment:
    ``(channels (k,), positions (k, repeat))``."""
    result, offset = [], 0
    for seg in use.axis.segments:
        if graph.table.find(seg.space) == root:
            ch = torch.arange(seg.start, seg.stop)
            result.append((ch, offset + (ch - seg.start).unsqueeze(1) * seg.repeat + torch.arange(seg.repeat)))
        offset += seg.width
    return result


RuleFn = Callable[["GraphBuilder", fx.Node], Axis | None]


class GraphBuilder:
    """Walks the fx graph in topological order and gives each tensor its channel axis."""

    def __init__(self, graph: ChannelGraph, allow_unknown: bool) -> None:
        self.g = graph
        self.allow_unknown = allow_unknown

    # -- helpers used by the rules ---------------------------------------------------
    def axis(self, arg: Any) -> Axis | None:
        return self.g.axes.get(arg.name) if isinstance(arg, fx.Node) else None

    def value(self, arg: Any) -> Any:
        return self.g.values.get(arg.name) if isinstance(arg, fx.Node) else arg

    def module(self, node: fx.Node) -> nn.Module:
        return self.g.module(str(node.target))

    def new_space(self, node: fx.Node, size: int, dim: int, producers: Iterable[tuple[str, int]] = ()) -> Axis:
        sid = self.g.table.new(size, node.name)
        space = self.g.table.get(sid)
        for attr, pdim in producers:
            space.producers.append(Slice(str(node.target), attr, pdim))
        return Axis(dim, (Segment(sid, 0, size),))

    def use(self, node: fx.Node, axis: Axis, attr: str, dim: int, *, consumer: bool, zero_kills: bool = False) -> None:
        use = Use(str(node.target), node.name, Slice(str(node.target), attr, dim), axis, zero_kills)
        for root in dict.fromkeys(self.g.table.find(seg.space) for seg in axis.segments):  # once per space
            space = self.g.table.get(root)
            (space.consumers if consumer else space.passthrough).append(use)

    def pin(self, axis: Axis | None, reason: str) -> None:
        if axis is not None:
            for seg in axis.segments:
                self.g.table.get(seg.space).pinned.append(reason)

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if isinstance(self.g.values.get(a.name), Tensor)]

    def unknown(self, node: fx.Node, what: str) -> Axis | None:
        """No rule: fail loudly, or (opted in) leave every channel it touches untouched."""
        if not self.allow_unknown:
            raise UnsupportedModuleError(
                f"no channel rule for {what} at graph node '{node.name}'; declare the module a leaf "
                "with its own rule, or pass allow_unknown=True to leave its channels untouched"
            )
        for arg in self.tensor_inputs(node):
            self.pin(self.axis(arg), f"input of unsupported {what} ({node.name})")
        out = self.g.values.get(node.name)
        if isinstance(out, Tensor) and out.dim() >= 1:
            axis = self.new_space(node, out.shape[min(1, out.dim() - 1)], min(1, out.dim() - 1))
            self.pin(axis, f"output of unsupported {what} ({node.name})")
            return axis
        return None

    # -- the walk --------------------------------------------------------------------
    def run(self, rules: "RuleSet") -> None:
        for node in self.g.gm.graph.nodes:
            out = self.g.values.get(node.name)
            if node.op == "placeholder":
                axis = _input_axis(self, node, out)
            elif node.op == "output":
                for arg in node.all_input_nodes:
                    self.pin(self.axis(arg), f"model output ({arg.name})")
                axis = None
            elif node.op == "get_attr":
                axis = None  # parameters read directly: their consumers pin what they touch
            elif not _holds_tensor(out):
                axis = None  # shape arithmetic and other non-tensor bookkeeping
            elif node.op != "call_module" and not any(self.axis(a) for a in node.all_input_nodes):
                axis = None  # computed from no channel tensor (ids, positions, masks): nothing to track
            else:
                axis = rules.apply(self, node)
            if axis is not None:
                self.g.axes[node.name] = axis


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    return isinstance(value, (tuple, list)) and any(isinstance(v, Tensor) for v in value)


def _input_axis(b: GraphBuilder, node: fx.Node, value: Any) -> Axis | None:
    if not isinstance(value, Tensor) or value.dim() < 2 or not value.is_floating_point():
        return None
    # images and features are channel-first (N, C, ...); sequences are (N, T, C)
    dim = value.dim() - 1 if value.dim() == 3 else 1
    axis = b.new_space(node, value.shape[dim], dim)
    b.g.table.get(axis.segments[0].space).is_input = True
    return axis


class RuleSet:
    """Per-operation rules keyed by module type, function object or tensor-method name.

    Every module type with a rule is traced as a leaf (one node), so a custom module is
    supported by registering a rule for its type.
    """

    def __init__(self) -> None:
        self.modules: dict[type[nn.Module], RuleFn] = {}
        self.functions: dict[Any, RuleFn] = {}
        self.methods: dict[str, RuleFn] = {}

    def rule_for(self, node: fx.Node, module: nn.Module | None) -> RuleFn | None:
        """The rule of ``node`` (``module`` is its module for a ``call_module``), if any."""
        if node.op == "call_module":
            return next((self.modules[c] for c in type(module).__mro__ if c in self.modules), None)
        if node.op == "call_function":
            return self.functions.get(node.target)
        if node.op == "call_method":
            return self.methods.get(str(node.target))
        return None

    def apply(self, b: GraphBuilder, node: fx.Node) -> Axis | None:
        module = b.module(node) if node.op == "call_module" else None
        fn = self.rule_for(node, module)
        if any((a := b.axis(arg)) is not None and a.grid is not None for arg in node.all_input_nodes):
            # a channel axis split over two dims: only the ops of a channel shuffle know it
            if fn is None or not getattr(fn, "handles_grid", False):
                return b.unknown(node, f"{node.target} on a channel axis split over two dims")
        if fn is not None:
            return fn(b, node)
        if module is not None:
            return b.unknown(node, f"module '{node.target}' ({type(module).__name__})")
        if node.op == "call_function":
            return b.unknown(node, f"function {getattr(node.target, '__name__', node.target)}")
        if node.op == "call_method":
            return b.unknown(node, f"tensor method .{node.target}()")
        return b.unknown(node, f"operation {node.op}")


def build_channel_graph(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    rules: RuleSet,
    *,
    leaf_modules: tuple[type[nn.Module], ...] = (),
    allow_unknown: bool = False,
) -> ChannelGraph:
    """Trace ``model`` (left unchanged), run it once on ``example_inputs`` and find its spaces."""
    tracer = _Tracer(tuple(leaf_modules), frozenset(rules.modules))
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types; name the model and the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModuleError(f"cannot trace {type(model).__name__} with torch.fx: {first}") from exc
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            recorder = _Recorder(gm)
            recorder.run(*example_inputs)
    finally:
        for m, flag in was_training.items():
            m.training = flag
    cg = ChannelGraph(gm=gm, table=SpaceTable(), values=recorder.values, rules=rules)
    GraphBuilder(cg, allow_unknown).run(rules)
    return cg
