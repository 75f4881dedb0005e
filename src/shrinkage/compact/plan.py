"""Compaction plan: read trained weights, decide which channels go and what they leave behind.

A channel of a space can be removed when

* every consumer's weight slice for it is zero (nobody reads it), or
* it is *dead* (its value is a constant by construction: zero producer rows, a zero
  BatchNorm scale, on every path that reaches the consumers) so it
  carries an input-independent constant, and that constant can be folded into the bias
  of every consumer: a Linear always, a conv only when it pads nothing (zero padding
  would turn the constant into a border pattern) or the constant is exactly zero.

The constants are not derived by hand per layer type: the graph builder recorded every
consumer's actual input on the example inputs, and a dead channel is read off it.

When *every* channel of a space can go, the space is removed entirely if every op it
passes through works on a tensor with no channels: that is SSL's depth-wise removal.
A residual branch whose last layer reads nothing (or whose first keeps no filter) then
costs nothing, and only the shortcut (plus the constant the branch emitted) remains.
Attention heads are decided per module: a head goes when its value or output weights
are zero (see :mod:`shrinkage.layers.attention`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, fx, nn

from shrinkage.compact.choice import FormChoice, FormPolicy, default_policy
from shrinkage.compact.forms import FormContext
from shrinkage.compact.head_plan import decide_heads
from shrinkage.compact.layer_types import WeightUse, canonical_param, layer_type_of
from shrinkage.compact.module_attrs import ConvLike
from shrinkage.errors import ConfigError
from shrinkage.graph.builder import ChannelGraph, Combine, FreeOperand, channel_positions, channel_runs, qualified_name
from shrinkage.graph.capture import Capture
from shrinkage.graph.export_graph import layer_input, node_owner
from shrinkage.graph.spaces import Axis, Space, Use
from shrinkage.layers import HeadPrunedAttention, removable_heads
from shrinkage.nonzero import used_along, used_rows_and_columns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompactOptions:
    """Knobs of :func:`shrinkage.compact`.

    ``select_inputs_min_fraction``: a layer whose unused inputs cannot be removed upstream
    (input pixels, channels still read elsewhere) may get an index-select in front when at
    least this fraction of its inputs is unused. ``lower_min_fraction``: a conv may become
    an im2col GEMM over its kept filter-shape columns when at least this fraction of its
    columns is zero (set above 1 to disable). ``round_to``: every kept channel count (and
    every selected input width) is rounded up to a multiple of it by keeping zero
    channels, which is exact. ``choose_by``: how each layer's form is chosen among its
    exact forms (:class:`~shrinkage.compact.choice.Measured` or
    :class:`~shrinkage.compact.choice.ByMacs`; ``None``: the process default, see
    :func:`~shrinkage.compact.choice.default_policy`). ``capture``: how the model's graph
    is captured (:class:`~shrinkage.graph.capture.Capture`; the plan records which one was used).
    """

    select_inputs_min_fraction: float = 0.05
    lower_min_fraction: float = 0.25
    allow_unknown: bool = False
    leaf_modules: tuple[type[nn.Module], ...] = ()
    round_to: int = 1
    choose_by: FormPolicy | None = None
    capture: Capture = Capture.AUTO

    def __post_init__(self) -> None:
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"CompactOptions: round_to must be a positive integer, got {self.round_to!r}")
        if not isinstance(self.capture, Capture):
            raise ConfigError(f"CompactOptions: capture must be a shrinkage.Capture, got {self.capture!r}")
        if self.choose_by is not None and not isinstance(self.choose_by, FormPolicy):
            raise ConfigError(f"CompactOptions: choose_by must be Measured(), ByMacs() or None, got {self.choose_by!r}")

    def policy(self) -> FormPolicy:
        return self.choose_by if self.choose_by is not None else default_policy()

    def form_context(self, layer: str) -> FormContext:
        return FormContext(layer, self.select_inputs_min_fraction, self.lower_min_fraction, self.round_to)


@dataclass
class CompactionPlan:
    """What to keep, per module and dim, plus the bias corrections of folded constants,
    the removed attention heads and, per layer with several exact forms, the chosen
    form: ``forms`` records every candidate's MACs and time and the choice,
    ``layers`` holds the chosen layer, built from the model's weights."""

    keep: dict[tuple[str, int], Tensor] = field(default_factory=dict)  # (module, dim) -> bool mask
    bias_delta: dict[str, Tensor] = field(default_factory=dict)  # consumer module -> added bias
    heads: dict[str, Tensor] = field(default_factory=dict)  # attention module -> bool mask of kept heads
    #: hand-written attention module -> bool mask of kept key/value heads (query heads follow)
    attention_heads: dict[str, Tensor] = field(default_factory=dict)
    forms: dict[str, FormChoice] = field(default_factory=dict)  # layer -> its form choice
    layers: dict[str, nn.Module] = field(default_factory=dict)  # layer -> the chosen layer
    #: layer -> its plain compacted form, built while choosing forms (shrunk, bias folded);
    #: handed to the first :func:`~shrinkage.compact.api.apply_plan`, which builds the others
    built: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    spaces: list[dict[str, Any]] = field(default_factory=list)
    capture: Capture = Capture.FX  # the capture that produced the graph
    #: (module, attr) of a free tensor (a layer scale, a position embedding, a class token
    #: of a module without layer type) -> (dim, bool mask of its kept positions along it)
    free_tensors: dict[tuple[str, str], tuple[int, Tensor]] = field(default_factory=dict)
    #: the model's output tensors on the example inputs (eval mode) when the capture ran the
    #: model itself; compaction checks its result against them instead of running it again
    model_outputs: list[Tensor] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable description (indices as lists)."""
        modules: dict[str, dict[str, Any]] = {}
        for (name, dim), mask in sorted(self.keep.items()):
            modules.setdefault(name, {})[f"keep_dim{dim}"] = mask.nonzero().flatten().tolist()
        for name in self.bias_delta:
            modules.setdefault(name, {})["bias_folded"] = True
        for name, mask in (self.heads | self.attention_heads).items():
            modules.setdefault(name, {})["kept_heads"] = mask.nonzero().flatten().tolist()
        for name, choice in self.forms.items():
            modules.setdefault(name, {})["form"] = choice.as_dict()
        tensors = {
            qualified_name(module, attr): {"dim": dim, "kept": mask.nonzero().flatten().tolist()}
            for (module, attr), (dim, mask) in sorted(self.free_tensors.items())
        }
        return {"capture": self.capture.value, "modules": modules, "spaces": self.spaces, "tensors": tensors}


def _param(cg: ChannelGraph, module: str, attr: str) -> Tensor:
    """The parameter in canonical orientation (dim 0 outputs, dim 1 inputs; see layer_types)."""
    return canonical_param(cg.module(module), attr)


class _Scans:
    """Which positions along a parameter's dims hold a non-zero, scanned once per parameter
    per decision: a conv weight is asked about its filters by one space, about its input
    channels by the next, and about its filters again for constant channels. Dims 0 and 1
    come from one pass over the weight (:func:`used_rows_and_columns`)."""

    def __init__(self, cg: ChannelGraph) -> None:
        self.cg = cg
        self._pairs: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}

    def used(self, module: str, attr: str, dim: int) -> Tensor:
        p = _param(self.cg, module, attr)
        dim = dim % p.dim() if p.dim() else 0
        if p.dim() < 2 or dim > 1:
            return used_along(p, dim)
        if (module, attr) not in self._pairs:
            self._pairs[module, attr] = used_rows_and_columns(p)
        return self._pairs[module, attr][dim]

    def zero_channels(self, cg: ChannelGraph, use: Use, root: int, n: int) -> Tensor:
        """Bool ``(n,)``: channel's slice of ``use``'s parameter is entirely zero."""
        used = self.used(use.slice.module, use.slice.attr, use.slice.dim)
        zero = torch.ones(n, dtype=torch.bool)
        for start, stop, offset, repeat in channel_runs(cg, use, root):
            zero[start:stop] &= ~used[offset : offset + (stop - start) * repeat].view(stop - start, repeat).any(dim=1)
        return zero


def _present(cg: ChannelGraph, axis: Axis, root: int, n: int) -> Tensor:
    """Bool ``(n,)``: which channels of space ``root`` the tensor with ``axis`` carries."""
    present = torch.zeros(n, dtype=torch.bool)
    for seg in axis.segments:
        if cg.table.find(seg.space) == root:
            present[seg.start : seg.stop] = True
    return present


def _constant_channels(
    cg: ChannelGraph, scans: _Scans, root: int, space: Space, carriers: list[fx.Node | None]
) -> dict[str, Tensor]:
    """Node name -> bool ``(n,)``: channels of ``root`` that node outputs as an input-independent
    constant, *by construction* (never judged from recorded values, which can look constant
    by chance: a ReLU that happened to see only negatives).

    Walking the nodes that carry the space in graph order: a producer's channel is constant
    when its weight row is zero; a zero BatchNorm scale or depthwise kernel makes it so;
    any other op is constant where all of its inputs that carry the space are (an add of a
    zero branch to a live shortcut is not).
    """
    n = space.size
    weights = {s.module: s for s in space.producers if s.attr == "weight"}
    biases = {s.module: s for s in space.producers if s.attr == "bias"}
    kills: dict[str, list[Use]] = {}
    for use in space.passthrough:
        if use.zero_kills:
            kills.setdefault(use.node, []).append(use)
    const: dict[str, Tensor] = {}
    zero: dict[str, Tensor] = {}  # constant and exactly zero
    for node in carriers:
        if node is None:
            continue  # a piece of a split: its getitem node carries it again
        carried = _present(cg, cg.axes[node.name], root, n)
        owner = node_owner(cg, node)
        if owner is not None and owner in weights:
            s = weights[owner]
            w = _param(cg, s.module, s.attr).movedim(s.dim, 0)
            c = ~scans.used(s.module, s.attr, s.dim) if w.numel() else torch.ones(n, dtype=torch.bool)
            z = c.clone()
            if owner in biases:
                z &= _param(cg, owner, "bias").movedim(biases[owner].dim, 0).eq(0)
        else:
            inputs = [a for a in node.all_input_nodes if a.name in const]
            c = torch.zeros(n, dtype=torch.bool) if not inputs else torch.ones(n, dtype=torch.bool)
            padded = _pads(cg, node)
            for a in inputs:
                # padding turns a non-zero constant into a border pattern: only zero stays constant
                c &= (zero[a.name] if padded else const[a.name]) | ~_present(cg, cg.axes[a.name], root, n)
            z = _zero_out(cg, node, inputs, zero, root, n)
            if node.name in cg.free_operands:
                z = _zero_with_free(cg, scans, cg.free_operands[node.name], inputs, zero, root, n)
            if getattr(_rule(cg, node), "zero_bias_keeps_zero", False):
                # a per-channel scale plus bias (a depthwise conv): zero in, zero bias, zero out
                z = torch.zeros(n, dtype=torch.bool)
                if inputs:
                    z = torch.ones(n, dtype=torch.bool)
                    for a in inputs:
                        z &= zero[a.name] | ~_present(cg, cg.axes[a.name], root, n)
                    for use in space.passthrough:
                        if use.node == node.name and use.slice.attr == "bias":
                            z &= scans.zero_channels(cg, use, root, n) | ~_present(cg, use.axis, root, n)
            c |= z
        for use in kills.get(node.name, []):
            c |= scans.zero_channels(cg, use, root, n) & _present(cg, use.axis, root, n)
        const[node.name] = c & carried
        zero[node.name] = z & carried
    return const


def _pads(cg: ChannelGraph, node: fx.Node) -> bool:
    """Does the op pad its input (its rule says; a depthwise conv's padding, an average pool's)?"""
    rule = _rule(cg, node)
    pads = getattr(rule, "pads", None)
    if pads is None:
        return False
    owner = node_owner(cg, node)
    return bool(pads(node, cg.module(owner) if owner is not None else None))


def _rule(cg: ChannelGraph, node: fx.Node) -> object:
    if cg.rules is None:
        return None
    return cg.rules.rule_for(node, cg.module(str(node.target)) if node.op == "call_module" else None)


def _zero_out(
    cg: ChannelGraph, node: fx.Node, inputs: list[fx.Node], zero: dict[str, Tensor], root: int, n: int
) -> Tensor:
    """Channels ``node`` outputs as exactly zero given its inputs' zero channels: a product
    is zero where any factor is (``0 * s == 0`` whatever ``s``: a squeeze-excitation gate,
    a gated MLP's other branch); an op whose rule says it maps zero to zero (activations
    with ``f(0) = 0``, pooling, reshapes; an add of two zero operands) where all of its
    tensor inputs are. Values are assumed finite."""
    rule = _rule(cg, node)
    out = torch.zeros(n, dtype=torch.bool)
    if not inputs:
        return out
    if getattr(rule, "product", False):
        for a in inputs:
            out |= zero[a.name] & _present(cg, cg.axes[a.name], root, n)
        return out
    tensors = [a for a in node.all_input_nodes if isinstance(cg.values.get(a.name), Tensor)]
    operands = node.args[:2]
    two_zero_operands = getattr(rule, "adds_zero", False) and all(
        isinstance(a, fx.Node) and a.name in zero for a in operands
    )  # an add of a number or of a tensor without these channels is not zero
    if two_zero_operands or (getattr(rule, "keeps_zero", False) and all(a.name in zero for a in tensors)):
        out = torch.ones(n, dtype=torch.bool)
        for a in inputs:
            out &= zero[a.name] | ~_present(cg, cg.axes[a.name], root, n)
    return out


def _zero_with_free(
    cg: ChannelGraph,
    scans: _Scans,
    free: list[FreeOperand],
    inputs: list[fx.Node],
    zero: dict[str, Tensor],
    root: int,
    n: int,
) -> Tensor:
    """Channels an op meeting free tensors (a layer scale, a position embedding) outputs as
    exactly zero: its channel operands' zeros combined with the tensors' zero entries as the
    op combines them. Values are assumed finite (``0 / p == 0``)."""
    operands = torch.ones(n, dtype=torch.bool) if inputs else torch.zeros(n, dtype=torch.bool)
    for a in inputs:
        operands &= zero[a.name] | ~_present(cg, cg.axes[a.name], root, n)
    out = operands.clone()
    for f in free:
        entries = scans.zero_channels(cg, f.use, root, n) & _present(cg, f.use.axis, root, n)
        if f.combine is Combine.SUM:
            out &= entries
        elif f.combine is Combine.PRODUCT:
            out |= entries
        elif not f.numerator:  # p / x: a zero x is no zero output
            out = torch.zeros(n, dtype=torch.bool)
    return out


def _fold(
    cg: ChannelGraph, nodes: dict[str, fx.Node], use: Use, root: int, n: int, candidates: Tensor
) -> tuple[Tensor, Tensor]:
    """Which candidate channels this consumer can absorb, and the bias it must add for them.

    Returns ``(ok (n,), delta (out,))``: ``ok[c]`` for channels whose recorded input is the
    same at every batch/spatial/token position and whose constant the layer can absorb.
    """
    module = cg.module(use.module)
    layer_type = layer_type_of(module)
    weight_use = layer_type.weight_use if layer_type is not None else None
    ok = torch.zeros(n, dtype=torch.bool)
    node = nodes[use.node]
    x = cg.values[layer_input(node).name]
    weight = _param(cg, use.module, "weight")
    delta = torch.zeros(weight.shape[0], dtype=weight.dtype)
    for ch, pos in channel_positions(cg, use, root):
        sel = candidates[ch]
        if not sel.any():
            continue
        ch, pos = ch[sel], pos[sel]
        flat = pos.reshape(-1)
        if weight_use in (WeightUse.LINEAR, WeightUse.MATMUL):
            vals = x.movedim(-1, 0)[flat].reshape(flat.numel(), -1)  # (positions, everything else)
            const = (vals == vals[:, :1]).all(dim=1).reshape(pos.shape).all(dim=1)
            v = vals[:, 0].reshape(pos.shape)  # (k, repeat)
            ok[ch] = const
            use_pos = pos[const].reshape(-1)
            delta += weight[:, use_pos] @ v[const].reshape(-1)
        elif weight_use is WeightUse.CONV and module.groups == 1:
            vals = x.movedim(1, 0)[flat].reshape(flat.numel(), -1)
            const = (vals == vals[:, :1]).all(dim=1)
            v = vals[:, 0]
            padding = cast(ConvLike, module).padding  # the module of a CONV layer type
            pads = padding if not isinstance(padding, str) else (1,)
            padded = padding == "same" or any(p != 0 for p in pads)
            absorbable = const & ((v == 0) | (not padded))
            ok[ch] = absorbable
            kernel_sum = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(dim=2)  # (out, in)
            delta += kernel_sum[:, flat[absorbable]] @ v[absorbable]
    return ok, delta


def _zero_width_ok(cg: ChannelGraph, space: Space, nodes: list[fx.Node | None]) -> bool:
    """Can every channel of ``space`` go? Each layer owning one of its slices must have a
    zero-width surgery, and each op its tensors pass through must accept no channels."""
    free = _free_uses(cg)
    uses = [u for u in space.passthrough + space.consumers if u not in free]  # a free tensor slices to nothing
    modules = {s.module for s in space.producers} | {u.module for u in uses}
    if any(not ((lt := layer_type_of(cg.module(m))) is not None and lt.zero_width) for m in modules):
        return False
    rules = cg.rules
    return rules is not None and all(
        n is not None
        and getattr(rules.rule_for(n, cg.module(str(n.target)) if n.op == "call_module" else None), "zero_width", False)
        for n in nodes
    )


def _nodes_by_space(cg: ChannelGraph, nodes: dict[str, fx.Node]) -> dict[int, list[fx.Node | None]]:
    """Root space -> the graph nodes whose output carries some of its channels. An item of a
    tuple output (``<node>.<i>``: a piece of a split, a batch norm's output) is skipped: the
    node that made the tuple is listed (whether it runs on no channels is its rule's
    answer), and so is the ``getitem`` that picks the item."""
    out: dict[int, list[fx.Node | None]] = {}
    for name, axis in cg.axes.items():
        if name not in nodes:
            source = name.rpartition(".")[0]
            if source in nodes:
                continue
        for root in dict.fromkeys(cg.table.find(seg.space) for seg in axis.segments):  # a shuffle: many segments
            out.setdefault(root, []).append(nodes.get(name))
    return out


def _decide_heads(cg: ChannelGraph, plan: CompactionPlan) -> None:
    # only attentions the graph calls itself: inside another leaf, who knows what reads them
    called = {str(n.target) for n in cg.gm.graph.nodes if n.op == "call_module"}
    for name, module in cg.gm.named_modules():
        if not isinstance(module, nn.MultiheadAttention | HeadPrunedAttention) or name in cg.heads_fixed:
            continue
        if name not in called:
            continue
        if isinstance(module, nn.MultiheadAttention) and (module.bias_k is not None or module.add_zero_attn):
            continue  # extra key/value tokens: not supported by HeadPrunedAttention
        keep = ~removable_heads(name, module)
        if not keep.all():
            plan.heads[name] = keep


def _round_kept(remove: Tensor, unread: Tensor, round_to: int) -> Tensor:
    """``remove`` with enough channels kept again that the kept count is a multiple of
    ``round_to`` (or the whole space). Unread channels come back first (nobody reads them,
    so keeping them changes nothing); a dead channel kept again is simply not folded."""
    extra = (-int((~remove).sum())) % round_to
    if not extra:
        return remove
    order = torch.cat([(remove & unread).nonzero().flatten(), (remove & ~unread).nonzero().flatten()])
    remove = remove.clone()
    remove[order[:extra]] = False
    return remove


def decide(cg: ChannelGraph, round_to: int = 1, *, free_tensors: bool = False) -> CompactionPlan:
    """Compute the keep masks and bias folds of every space of ``cg``, and the kept heads;
    kept channel counts are rounded up to multiples of ``round_to``. ``free_tensors``: the
    caller also slices the free tensors the plan lists (``plan.free_tensors``, see
    :func:`shrinkage.compact.surgery.slice_free_tensors`); otherwise the spaces that
    carry one stay whole."""
    plan = CompactionPlan()
    nodes = {n.name: n for n in cg.gm.graph.nodes}
    space_nodes = _nodes_by_space(cg, nodes)
    _decide_heads(cg, plan)
    scans = _Scans(cg)
    head_keep = _decide_attention_heads(cg, scans, plan)
    free = _free_uses(cg)
    for root in cg.table.roots():
        space = cg.table.get(root)
        n = space.size
        pinned = list(space.pinned)
        if not free_tensors and any(u in free for u in space.passthrough):
            pinned.append("a free tensor meets these channels, and the caller does not slice free tensors")
        summary = {"nodes": space.nodes, "size": n, "kept": n, "pinned": sorted(set(pinned))}
        plan.spaces.append(summary)
        if space.heads is not None:  # channels that go by whole heads
            if root in head_keep:
                summary["kept"] = int(head_keep[root].sum())
                _remove(plan, cg, space, root, head_keep[root])
            continue
        if pinned or space.is_input or not space.consumers or n == 0:
            continue
        unread = torch.ones(n, dtype=torch.bool)
        for use in space.consumers:
            unread &= scans.zero_channels(cg, use, root, n)
        const = _constant_channels(cg, scans, root, space, space_nodes.get(root, []))
        dead = torch.ones(n, dtype=torch.bool)
        for use in space.consumers:  # constant where every consumer reads it
            x = layer_input(nodes[use.node])
            dead &= const.get(x.name, torch.zeros(n, dtype=torch.bool)) | ~_present(cg, use.axis, root, n)
        candidates = dead & ~unread
        foldable = candidates.clone()
        deltas: dict[str, Tensor] = {}
        for use in space.consumers:
            ok, delta = _fold(cg, nodes, use, root, n, candidates)
            # a consumer that does not read a channel absorbs it whatever it holds (a padded
            # conv whose columns for a non-zero constant are zero)
            foldable &= ok | scans.zero_channels(cg, use, root, n)
            deltas[use.module] = delta
        remove = unread | (candidates & foldable)
        if remove.all() and not _zero_width_ok(cg, space, space_nodes.get(root, [])):
            remove[0] = False  # some op cannot run on zero channels: keep the first
        remove = _round_kept(remove, unread, round_to)
        if not remove.any():
            continue
        if (candidates & foldable & remove).any():
            # recompute the folds for exactly the channels removed (some candidates may not be)
            for use in space.consumers:
                _, delta = _fold(cg, nodes, use, root, n, candidates & foldable & remove)
                if delta.abs().sum() > 0:
                    plan.bias_delta[use.module] = plan.bias_delta.get(use.module, 0) + delta
        summary["kept"] = int((~remove).sum())
        _remove(plan, cg, space, root, ~remove)
    return plan


def _remove(plan: CompactionPlan, cg: ChannelGraph, space: Space, root: int, keep_channels: Tensor) -> None:
    """Record in ``plan`` that only ``keep_channels`` of space ``root`` stay, in every slice."""
    for s in space.producers:
        _mask(plan, cg, s.module, s.attr, s.dim)[:] &= keep_channels
    free = _free_uses(cg)
    for use in space.passthrough + space.consumers:
        if use in free:
            mask = _free_mask(plan, cg, use)
        else:
            mask = _mask(plan, cg, use.slice.module, use.slice.attr, use.slice.dim)
        for start, stop, offset, repeat in channel_runs(cg, use, root):
            mask[offset : offset + (stop - start) * repeat].view(stop - start, repeat).logical_and_(
                keep_channels[start:stop].unsqueeze(1)
            )


def _decide_attention_heads(cg: ChannelGraph, scans: _Scans, plan: CompactionPlan) -> dict[int, Tensor]:
    """The heads of hand-written attention modules that go; returns the kept channels per space root."""
    keep: dict[int, Tensor] = {}
    for unit in cg.head_units:
        decided = decide_heads(cg, unit, scans.zero_channels)
        if decided is not None:
            plan.attention_heads[unit.module] = decided.key_value
            keep.update(decided.channels)
            plan.free_tensors.update(decided.per_head)  # a module of its own kind: sliced as free tensors
    return keep


def _mask(plan: CompactionPlan, cg: ChannelGraph, module: str, attr: str, dim: int) -> Tensor:
    key = (module, dim)
    if key not in plan.keep:
        plan.keep[key] = torch.ones(_param(cg, module, attr).shape[dim], dtype=torch.bool)
    return plan.keep[key]


def _free_uses(cg: ChannelGraph) -> set[Use]:
    """The pass-through uses that slice a free tensor (see :class:`~shrinkage.graph.builder.FreeOperand`)."""
    return {f.use for found in cg.free_operands.values() for f in found}


def _free_mask(plan: CompactionPlan, cg: ChannelGraph, use: Use) -> Tensor:
    key, dim = (use.slice.module, use.slice.attr), use.slice.dim
    if key not in plan.free_tensors:
        size = getattr(cg.module(use.slice.module), use.slice.attr).shape[dim]
        plan.free_tensors[key] = (dim, torch.ones(size, dtype=torch.bool))
    found_dim, mask = plan.free_tensors[key]
    assert found_dim == dim  # one op reads a free tensor (GraphBuilder.free_tensor)
    return mask
