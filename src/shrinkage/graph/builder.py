"""Build the channel graph of a model: trace it, record values, apply per-op rules.

Tracing uses ``torch.fx`` symbolic tracing: it is fast (milliseconds for a ResNet-50,
where ``torch.export`` takes seconds), keeps module boundaries as ``call_module``
nodes (so rules and surgery speak in module names users know), and custom modules
can be declared leaves. One concrete run on the example inputs records every
intermediate tensor: shapes for the reshape rules and the exact values that decide
whether a dead channel's constant can be folded into its consumers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, fx, nn

from shrinkage.errors import ExampleInputError, UnsupportedModuleError
from shrinkage.graph.outputs import output_tensors
from shrinkage.graph.spaces import Axis, Segment, Slice, SpaceTable, Use

if TYPE_CHECKING:
    from shrinkage.graph.attention_heads import HeadUnit


try:  # generates the graph's Python code only when it is called: the capture only interprets the graph
    from torch.fx._lazy_graph_module import _LazyGraphModule as _GraphModule
except ImportError:  # a torch without it (private API): the code is generated at once, as before
    _GraphModule = fx.GraphModule  # type: ignore[misc,assignment]


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
    """Runs the graph once and keeps every node's value.

    It also notes in-place mutation (a tensor's version counter moving): ``mutations``
    maps a node to the input nodes it mutated, and ``mutated`` lists the nodes whose
    value changed after it was recorded. Values of the nodes in ``snapshot`` are copied
    when recorded, so they hold what the node's readers saw, not what a later in-place
    op left behind. Without a ``snapshot``, the inputs of an op that says it works in
    place (a method or function ending in ``_``, ``inplace=True``: a ReLU after a
    BatchNorm) are copied just before it runs, while they still hold what was recorded;
    ``snapped`` lists them, and only a mutation that this did not foresee needs the graph
    recorded again (:attr:`unforeseen`).
    """

    def __init__(self, gm: fx.GraphModule, snapshot: frozenset[str] = frozenset()) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # errors name their node themselves, on one line
        self.values: dict[str, Any] = {}
        self.snapshot = snapshot
        self.mutations: dict[str, list[str]] = {}
        self.live: dict[str, Any] = {}  # the values themselves, as later ops left them
        self.result: Any = None  # what the graph returned
        self._versions: dict[str, tuple[int, ...]] = {}
        self.snapped: set[str] = set()  # nodes whose value was copied before an in-place op changed it

    def run_node(self, n: fx.Node) -> Any:
        inputs = [a for a in n.all_input_nodes if a.name in self._versions]
        before = [_versions(self.live[a.name]) for a in inputs]
        if not self.snapshot and _works_in_place(self.module, n):
            for a, v in zip(inputs, before, strict=True):
                if a.name not in self.snapped and v == self._versions[a.name]:  # still as recorded
                    self.values[a.name] = _copied(self.live[a.name])
                    self.snapped.add(a.name)
        try:
            out = super().run_node(n)
        except Exception as exc:  # a wrong shape or dtype of the example: name where it fails
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            what = f"module '{n.target}'" if n.op == "call_module" else f"{getattr(n.target, '__name__', n.target)}"
            raise ExampleInputError(f"the example inputs fail at graph node '{n.name}' ({what}): {first}") from exc
        changed = [a.name for a, v in zip(inputs, before, strict=True) if _versions(self.live[a.name]) != v]
        if changed:
            self.mutations[n.name] = changed
        self.values[n.name] = _copied(out) if n.name in self.snapshot else out
        if _tensors(out):
            self.live[n.name] = out
            self._versions[n.name] = _versions(out)
        return out

    @property
    def mutated(self) -> frozenset[str]:
        """Nodes whose value an op after them changed in place."""
        return frozenset(name for name, v in self._versions.items() if _versions(self.live[name]) != v)

    @property
    def unforeseen(self) -> frozenset[str]:
        """Mutated nodes whose value was not copied before the change (a view of a tensor
        changed in place, an op that does not say it works in place)."""
        return self.mutated - self.snapped


def _works_in_place(gm: nn.Module, n: fx.Node) -> bool:
    """Does the op say it changes an input (``x.relu_()``, ``nn.ReLU(inplace=True)``,
    ``F.relu(x, inplace=True)``)? A guess that only saves work: the version counters
    still catch every mutation."""
    if n.op == "call_module":
        return getattr(gm.get_submodule(str(n.target)), "inplace", False) is True
    if n.op == "call_method":
        name = str(n.target)
    elif n.op == "call_function":
        if n.kwargs.get("inplace") is True:
            return True
        name = getattr(n.target, "__name__", "")
    else:
        return False
    return name.endswith("_") and not name.endswith("__")


def _tensors(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, Tensor)]
    return []


def _versions(value: Any) -> tuple[int, ...]:
    # inference-mode tensors have no version counter; they cannot be mutated by the model either
    return tuple(t._version if not t.is_inference() else 0 for t in _tensors(value))


def _copied(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(v.clone() if isinstance(v, Tensor) else v for v in value)
    return value


class Combine(enum.Enum):
    """How an op combines a channel of its tensor with the same channel of a free tensor:
    what the plan may conclude about a zero channel (values are assumed finite)."""

    #: ``x + p``, ``x - p``, ``max(x, p)``, a concat along tokens: zero where both are
    SUM = "sum"
    #: ``x * p``: zero where either is
    PRODUCT = "product"
    #: ``x / p`` (``numerator``) or ``p / x``: zero where the numerator is
    QUOTIENT = "quotient"


@dataclass(frozen=True)
class FreeOperand:
    """A parameter or buffer of a module without layer type (a layer scale, a position
    embedding, a class token) that an op meets channel by channel: ``use`` slices it with
    the channels of the tensor it meets (a pass-through use of their space)."""

    use: Use
    combine: Combine
    #: for a quotient: the channel tensor is the numerator
    numerator: bool = True


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
    #: registered attention modules whose channels go by whole heads (found by the export capture)
    head_units: list[HeadUnit] = field(default_factory=list)
    #: op node -> the free tensors it meets channel by channel (sliced with those channels)
    free_operands: dict[str, list[FreeOperand]] = field(default_factory=dict)
    #: the model itself, where the capture reads its tensors by their names in it (torch.export);
    #: free tensors are sliced only then
    root: nn.Module | None = None
    #: the model's output tensors on the example inputs in eval mode, where the capture ran
    #: the model itself (torch.fx, to check its trace); compaction compares its result with them
    model_outputs: list[Tensor] | None = None

    #: name -> submodule of ``gm``, filled on first use (rules and plans look modules up by
    #: name thousands of times; ``get_submodule`` walks the dotted path every time)
    _by_name: dict[str, nn.Module] | None = field(default=None, init=False, repr=False, compare=False)

    def module(self, name: str) -> nn.Module:
        if self._by_name is None:
            self._by_name = dict(self.gm.named_modules(remove_duplicate=False))
        found = self._by_name.get(name)
        return found if found is not None else self.gm.get_submodule(name)  # get_submodule names what is missing


def qualified_name(module: str, attr: str) -> str:
    """``module.attr`` as ``named_parameters`` spells it; ``attr`` alone for a tensor of the
    model itself (module ``""``: a position embedding or class token of the root module)."""
    return f"{module}.{attr}" if module else attr


def channel_positions(graph: ChannelGraph, use: Use, root: int) -> list[tuple[Tensor, Tensor]]:
    """Where the channels of space ``root`` sit along ``use``'s dim, one entry per segment:
    ``(channels (k,), positions (k, repeat))`` (:func:`channel_runs`, as index tensors)."""
    result = []
    for start, stop, offset, repeat in channel_runs(graph, use, root):
        ch = torch.arange(start, stop)
        result.append((ch, offset + (ch - start).unsqueeze(1) * repeat + torch.arange(repeat)))
    return result


def channel_runs(graph: ChannelGraph, use: Use, root: int) -> list[tuple[int, int, int, int]]:
    """:func:`channel_positions` as slices, one per segment: ``(start, stop, offset, repeat)``,
    channels ``start:stop`` of space ``root`` sit at positions ``offset`` to ``offset +
    (stop - start) * repeat`` along ``use``'s dim, ``repeat`` consecutive ones each. Slicing
    a mask with these costs a view where gathering by positions costs a copy."""
    result, offset = [], 0
    for seg in use.axis.segments:
        if graph.table.find(seg.space) == root:
            result.append((seg.start, seg.stop, offset, seg.repeat))
        offset += seg.width
    return result


RuleFn = Callable[["GraphBuilder", fx.Node], Axis | None]


def node_args(node: fx.Node) -> tuple[Any, ...]:
    """``node.args``, typed as the rules read them: fx types each argument as its wide
    ``Argument`` union, while what it holds (an int dim, a list of sizes) is set by the
    op's signature, which the rule reading it knows."""
    return node.args


def node_kwargs(node: fx.Node) -> Mapping[str, Any]:
    """``node.kwargs``, typed as :func:`node_args` is."""
    return node.kwargs


class GraphBuilder:
    """Walks the fx graph in topological order and gives each tensor its channel axis."""

    def __init__(self, graph: ChannelGraph, allow_unknown: bool, *, sequence_inputs: bool = True) -> None:
        self.g = graph
        self.allow_unknown = allow_unknown
        #: a 3-D graph input is a sequence (N, T, C) when True, else a signal (N, C, L)
        self.sequence_inputs = sequence_inputs
        #: what ops without rule were met (left untouched when ``allow_unknown``)
        self.unknowns: list[str] = []

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

    def param(self, arg: Any) -> tuple[str, str] | None:
        """``(module, attr)`` when ``arg`` reads a parameter or buffer of a module, else None."""
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            module, _, attr = str(arg.target).rpartition(".")
            return module, attr
        return None

    def free_tensor(self, arg: Any, dim: int, reader: fx.Node, axis: Axis) -> Slice | str:
        """Dim ``dim`` of the tensor ``arg`` reads, to be sliced with the channels of ``axis``;
        or why it cannot be. ``reader`` is the op reading ``arg`` directly (the op itself,
        or the ``expand`` in front of a concat).

        Only a parameter or buffer of a module without layer type (a layer type's own
        tensors are sliced by its surgery), read by that one op, held under one name,
        saved with the model (a non-persistent buffer could not be restored sliced), and
        met by one whole channel space, channel ``c`` at position ``c``."""
        p = self.param(arg)
        root = self.g.root
        if p is None or root is None:
            return "not a parameter or buffer of the model" if p is None else "this capture does not slice tensors"
        module_name, attr = p
        full = f"{module_name}.{attr}" if module_name else attr
        module = root.get_submodule(module_name) if module_name else root
        tensor = module._parameters.get(attr) if attr in module._parameters else module._buffers.get(attr)
        if tensor is None:
            return f"'{full}' is not a parameter or buffer of the model"
        from shrinkage.compact.layer_types import layer_type_of  # the layer types import the graph rules

        if layer_type_of(module) is not None:
            return f"'{full}' belongs to layer '{module_name}' ({type(module).__name__})"
        if attr in module._non_persistent_buffers_set:
            return f"'{full}' is a non-persistent buffer"
        if _names_of(root, tensor) > 1:
            return f"'{full}' is shared with another name"
        readers = [u for n in self.g.gm.graph.nodes if n.op == "get_attr" and self.param(n) == p for u in n.users]
        if any(u is not reader for u in readers):
            return f"'{full}' is also read by {next(u for u in readers if u is not reader).name}"
        segments = axis.segments
        if len(segments) != 1 or axis.grid is not None:
            return f"'{full}' meets channels of several spaces"
        seg = segments[0]
        if seg.repeat != 1 or seg.start != 0 or seg.stop != self.g.table.get(seg.space).size:
            return f"'{full}' meets part of a channel space"
        return Slice(module_name, attr, dim)

    def free_use(self, node: fx.Node, axis: Axis, where: Slice, combine: Combine, *, numerator: bool = True) -> None:
        """Record that ``node`` meets the free tensor ``where`` channel by channel (see
        :meth:`free_tensor`): it is sliced with the channels of ``axis``."""
        use = Use(where.module, node.name, where, axis)
        self.g.table.get(axis.segments[0].space).passthrough.append(use)
        self.g.free_operands.setdefault(node.name, []).append(FreeOperand(use, combine, numerator))

    def pin(self, axis: Axis | None, reason: str) -> None:
        if axis is not None:
            for seg in axis.segments:
                self.g.table.get(seg.space).pinned.append(reason)

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if isinstance(self.g.values.get(a.name), Tensor)]

    def unknown(self, node: fx.Node, what: str) -> Axis | None:
        """No rule: fail loudly, or (opted in) leave every channel it touches untouched."""
        self.unknowns.append(what)
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

    def keep(self, node: fx.Node, why: str) -> Axis | None:
        """An op that mixes channels in a way no removal survives (a known op, not a
        missing rule): every channel it reads stays, and its output's channels form a new
        space that stays too. Exact by construction."""
        for arg in self.tensor_inputs(node):
            self.pin(self.axis(arg), f"{why} ({node.name})")
        out = self.g.values.get(node.name)
        if isinstance(out, Tensor) and out.dim() >= 1 and out.is_floating_point():
            dim = min(1, out.dim() - 1)
            axis = self.new_space(node, out.shape[dim], dim)
            self.pin(axis, f"{why} ({node.name})")
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
        self.couple_repeated_calls()

    def couple_repeated_calls(self) -> None:
        """A module called more than once has one set of weights for every call.

        Its output channels are the same filters at each call, so the spaces the calls
        produce merge (or, where their layouts differ, stay whole). Its input channels stay
        whole: removing one would have to be right at every call, and a dead channel's
        constant (folded into the bias once) may differ from call to call.
        """
        calls: dict[str, list[fx.Node]] = {}
        for node in self.g.gm.graph.nodes:
            if node.op == "call_module":
                calls.setdefault(str(node.target), []).append(node)
        sliced = {
            s.module
            for root in self.g.table.roots()
            for space in (self.g.table.get(root),)
            for s in [*space.producers, *(u.slice for u in space.passthrough + space.consumers)]
        }
        for name, nodes in calls.items():
            if len(nodes) < 2 or name not in sliced:
                continue
            why = f"module '{name}' is called {len(nodes)} times"
            for node in nodes:
                for arg in self.tensor_inputs(node):
                    self.pin(self.axis(arg), why)
            outputs = [a for a in (self.axis(n) for n in nodes) if a is not None]
            if not outputs:
                continue
            first = outputs[0]
            for other in outputs[1:]:
                if [(s.start, s.stop, s.repeat) for s in other.segments] != [
                    (s.start, s.stop, s.repeat) for s in first.segments
                ] or any(self.g.table.get(a.space).size != self.g.table.get(b.space).size
                         for a, b in zip(first.segments, other.segments, strict=True)):  # fmt: skip
                    for axis in outputs:
                        self.pin(axis, why)
                    break
                for a, b in zip(first.segments, other.segments, strict=True):
                    self.g.table.union(a.space, b.space)


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, Tensor):
        return True
    return isinstance(value, (tuple, list)) and any(isinstance(v, Tensor) for v in value)


def _input_axis(b: GraphBuilder, node: fx.Node, value: Any) -> Axis | None:
    if not isinstance(value, Tensor) or value.dim() < 2 or not value.is_floating_point():
        return None
    # images and features are channel-first (N, C, ...); a 3-D input is a sequence (N, T, C)
    # or a signal (N, C, L), as the builder was told
    dim = value.dim() - 1 if value.dim() == 3 and b.sequence_inputs else 1
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
    gm = _GraphModule(tracer.root, graph, type(model).__name__)
    recorder = _record(model, gm, example_inputs)
    outputs = _check_trace(model, example_inputs, recorder.result)
    if recorder.mutations:
        resolve_in_place(gm, recorder)
        if recorder.unforeseen:  # record again, keeping what each reader saw before the mutation
            recorder = _record(model, gm, example_inputs, recorder.mutated)
    cg = _find_spaces(gm, recorder.values, rules, allow_unknown, model)
    cg.model_outputs = outputs
    return cg


def _record(
    model: nn.Module, gm: fx.GraphModule, example_inputs: tuple[Any, ...], snapshot: frozenset[str] = frozenset()
) -> _Recorder:
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            recorder = _Recorder(gm, snapshot)
            # copies: a model that mutates its input in place must not change the caller's tensors
            recorder.result = recorder.run(*(x.clone() if isinstance(x, Tensor) else x for x in example_inputs))
    finally:
        for m, flag in was_training.items():
            m.training = flag
    return recorder


def _check_trace(model: nn.Module, example_inputs: tuple[Any, ...], traced: Any) -> list[Tensor]:
    """Refuse a trace that computes something else than the model; return the model's
    output tensors (eval mode), which compaction compares its result with.

    Symbolic tracing can lose an effect: ``x += y`` on a tensor that another name still
    refers to mutates it in eager mode, but fx (whose proxies have no ``__iadd__``) records
    an out-of-place add, so the other name keeps the old value in the graph."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            eager = model(*(x.clone() if isinstance(x, Tensor) else x for x in example_inputs))
    finally:
        for m, flag in flags:
            m.training = flag
    want = [t for t in torch.utils._pytree.tree_leaves(eager) if isinstance(t, Tensor)]
    got = [t for t in torch.utils._pytree.tree_leaves(traced) if isinstance(t, Tensor)]
    if len(want) != len(got) or any(a.shape != b.shape for a, b in zip(want, got, strict=True)):
        return output_tensors(eager)  # outputs this check cannot line up; the compacted model's own check still runs
    for a, b in zip(want, got, strict=True):
        if a.numel() and a.is_floating_point():
            scale = max(float(a.abs().max()), 1.0)
            if not float((a - b).abs().max()) <= 1e-6 * scale:
                raise UnsupportedModuleError(
                    f"the torch.fx trace of {type(model).__name__} computes other outputs than the model (an in-place "
                    "'x += y' on a tensor another name still refers to is traced out of place); write x.add_(y)"
                )
    return output_tensors(eager)


def _find_spaces(
    gm: fx.GraphModule, values: dict[str, Any], rules: RuleSet, allow_unknown: bool, root: nn.Module | None = None
) -> ChannelGraph:
    """Run the rules. A 3-D input is a sequence (N, T, C) or a signal (N, C, L); the other
    reading is tried when the first meets an op without rule (a Conv1d on (N, C, L))."""
    attempts: list[tuple[ChannelGraph, GraphBuilder | None, UnsupportedModuleError | None]] = []
    three_d = any(n.op == "placeholder" and _is_3d(values.get(n.name)) for n in gm.graph.nodes)
    for sequences in (True, False) if three_d else (True,):
        cg = ChannelGraph(gm=gm, table=SpaceTable(), values=values, rules=rules, root=root)
        builder = GraphBuilder(cg, allow_unknown, sequence_inputs=sequences)
        try:
            builder.run(rules)
        except UnsupportedModuleError as exc:
            attempts.append((cg, None, exc))
            continue
        attempts.append((cg, builder, None))
        if not builder.unknowns:
            break
    done = [(len(b.unknowns), i) for i, (_, b, _) in enumerate(attempts) if b is not None]
    if not done:  # the reading that got furthest names the op that stopped it
        furthest = max(attempts, key=lambda a: len(a[0].axes))[2]
        assert furthest is not None  # no builder finished: every attempt holds its error
        raise furthest
    return attempts[min(done)[1]][0]


def _is_3d(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dim() == 3 and value.is_floating_point()


def resolve_in_place(gm: fx.GraphModule, recorder: _Recorder) -> None:
    """Give in-place ops the meaning Python gives them.

    fx records ``h.add_(y)`` as a node, but a later ``fc(h)`` still reads the node of
    ``h``: the graph would say ``fc`` sees the value before the add. Every later reader of
    a mutated tensor is pointed at the mutating node instead (its output is that same
    tensor). A mutation that other values see through a view (a split piece, a reshape
    of the same storage) read later is refused, naming the op.
    """
    nodes = {n.name: n for n in gm.graph.nodes}
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    changed = False
    by_storage = _storage_index(recorder)
    for node in list(gm.graph.nodes):
        for name in recorder.mutations.get(node.name, []):
            for alias in _aliases(recorder, nodes, order, nodes[name], node, by_storage):
                later = [u for u in alias.users if order[u] > order[node]]
                if not later:
                    continue
                if recorder.live[alias.name] is not recorder.live.get(node.name):
                    raise UnsupportedModuleError(
                        f"in-place {_op_label(gm, node)} at graph node '{node.name}' changes '{alias.name}' "
                        f"(through '{name}'), which {later[0].name} reads afterwards; write the op out of place"
                    )
                for user in later:
                    user.replace_input_with(alias, node)
                    changed = True
    if changed:  # regenerating the code costs as much as a small model's forward pass
        gm.recompile()


def _aliases(
    recorder: _Recorder,
    nodes: dict[str, fx.Node],
    order: dict[fx.Node, int],
    target: fx.Node,
    at: fx.Node,
    by_storage: dict[int, list[str]],
) -> list[fx.Node]:
    """``target`` and every node recorded before ``at`` whose value shares its memory.
    ``by_storage``: storage address -> the nodes whose values use it (:func:`_storage_index`)."""
    storages = {t.untyped_storage().data_ptr() for t in _tensors(recorder.live[target.name]) if t.numel()}
    sharing = {name for ptr in storages for name in by_storage.get(ptr, [])}
    return [target] + sorted(
        (nodes[name] for name in sharing if nodes[name] is not target and order[nodes[name]] < order[at]),
        key=order.__getitem__,
    )


def _storage_index(recorder: _Recorder) -> dict[int, list[str]]:
    """Storage address -> the recorded nodes whose values use it (one pass instead of one
    scan of every value per mutation)."""
    index: dict[int, list[str]] = {}
    for name, value in recorder.live.items():
        for ptr in {t.untyped_storage().data_ptr() for t in _tensors(value) if t.numel()}:
            index.setdefault(ptr, []).append(name)
    return index


def _op_label(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module '{node.target}' ({type(gm.get_submodule(str(node.target))).__name__})"
    if node.op == "call_method":
        return f"tensor method .{node.target}()"
    return f"function {getattr(node.target, '__name__', node.target)}"


def _names_of(root: nn.Module, tensor: Tensor) -> int:
    """Under how many names ``root`` holds ``tensor`` (tied parameters: more than one)."""
    named = [*root.named_parameters(remove_duplicate=False), *root.named_buffers(remove_duplicate=False)]
    return sum(t is tensor for _, t in named)
