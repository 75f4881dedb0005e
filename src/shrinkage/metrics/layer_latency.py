"""Where the time goes: every compute layer of a dense and a compact model timed alone.

A *layer* is a module holding weights of its own with no submodules (Conv2d, Linear,
BatchNorm, LayerNorm, ...). A layer that never runs by itself but through its parent's
functional code (``nn.MultiheadAttention`` uses its ``out_proj`` weight directly) is
timed as that parent. The compact model's module under the same qualified name is what
replaced the layer, whatever its form (a smaller conv, ``SelectInputs`` + conv, a
lowered conv, a factorized pair): it is timed as one unit, as ``layer_table`` matches
rows by name.

Each layer is timed on the input it actually receives inside its own model, captured
by forward pre-hooks in one forward pass; then every layer of both models and both
whole models are timed in the same interleaved rounds. A layer's time is per forward
pass of the model (per call times the number of calls). What the layers do not
account for, ``model - sum of layers``, is "other": pooling, activations, reshapes,
additions and the Python between modules. Isolated layers run on warm caches, so the
sum can differ a little from the model's time; the difference shows in "other".
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from shrinkage.errors import ConfigError
from shrinkage.metrics import _format as fmt
from shrinkage.metrics._common import eval_mode, require_module
from shrinkage.metrics.size import count_macs
from shrinkage.metrics.timing import (
    Timer,
    check_positive_int,
    check_seconds,
    cpu_cores,
    load_average,
    plan_rounds,
    resolve_threads,
    sample_interleaved,
    timing_stats,
    torch_threads,
    wall_timer,
)

log = logging.getLogger(__name__)

REMOVED = "removed"
NOT_CALLED = "not called"
#: ``compact_type`` of a compact layer with no dense layer under its name
NEW = "(new in compact)"


@dataclass(frozen=True)
class LayerTiming:
    """One layer: its time in the dense and the compact model, per forward pass of the model.

    Attributes:
        name: qualified module name (``""`` is the root).
        kind: class of the dense layer (``None`` for a compact-only layer).
        dense_ms / compact_ms: median time per forward pass of the model, in ms;
            ``compact_ms`` is 0.0 when the layer was removed or is not called.
        speedup: ``dense_ms / compact_ms`` (``None`` where either is missing or 0).
        dense_macs / compact_macs: MACs of the module under that name (inclusive).
        mac_ratio: ``dense_macs / compact_macs``.
        dense_share / compact_share: the layer's fraction of its whole model's time.
        compact_type: class of the replacing module, ``"removed"`` when the name is gone.
        compact_form: the replacing module in one line: class and ``extra_repr``, children
            included (``Sequential(select=SelectInputs(dim=1, kept=3), layer=Conv2d(...))``).
        dense_calls / compact_calls: how often the layer runs in one forward pass.
        dense_spread / compact_spread: inter-quartile range over median of the per-call times.
    """

    name: str
    kind: str | None
    dense_ms: float | None
    compact_ms: float | None
    speedup: float | None
    dense_macs: int | None
    compact_macs: int | None
    mac_ratio: float | None
    dense_share: float | None
    compact_share: float | None
    compact_type: str | None
    compact_form: str | None
    dense_calls: int = 0
    compact_calls: int = 0
    dense_spread: float | None = None
    compact_spread: float | None = None


@dataclass(frozen=True)
class LayerLatency:
    """Per-layer timings of a dense and a compact model, and what the layers leave out.

    Attributes:
        rows: one :class:`LayerTiming` per dense layer (in ``named_modules`` order), then
            compact layers that have no dense layer under their name.
        batch_size: leading dimension of the first input tensor (``None`` if there is none).
        dense_ms / compact_ms: whole model, median per forward pass, timed in the same rounds.
        speedup: ``dense_ms / compact_ms``.
        dense_layers_ms / compact_layers_ms: sum of the rows' times.
        dense_layers_share / compact_layers_share: that sum as a fraction of the model's time.
        dense_other_ms / compact_other_ms: ``model - layers`` (pooling, activations, glue).
        dense_other_share / compact_other_share: ``1 - layers share``.
        threads, rounds, load_average, cpu_count: the timing conditions.
    """

    rows: list[LayerTiming]
    batch_size: int | None
    dense_ms: float
    compact_ms: float
    speedup: float | None
    dense_layers_ms: float
    compact_layers_ms: float
    dense_layers_share: float | None
    compact_layers_share: float | None
    dense_other_ms: float
    compact_other_ms: float
    dense_other_share: float | None
    compact_other_share: float | None
    threads: int
    rounds: int
    load_average: float | None = None
    cpu_count: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (rows become dicts)."""
        return asdict(self)


@dataclass
class _Call:
    """The first input a module received in the captured forward pass, and its call count."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    calls: int = 1


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _capture(model: nn.Module, inputs: tuple[Any, ...]) -> dict[str, _Call]:
    """Run ``model`` once and record, per module name, its first input and how often it ran.

    The recorded tensors are the live ones, not copies: timing depends on shapes and
    layouts, not on values, and copies would double the memory of every activation.
    """
    calls: dict[str, _Call] = {}
    handles = []

    def recorder(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if name in calls:
                calls[name].calls += 1
            else:
                calls[name] = _Call(args, dict(kwargs))

        return hook

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(recorder(name), with_kwargs=True))
    try:
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _inside(name: str, other: str) -> bool:
    """``name`` is ``other`` or lies below it."""
    return name == other or other == "" or name.startswith(other + ".")


def _layers(model: nn.Module, calls: Mapping[str, _Call]) -> list[str]:
    """Names of the compute layers of ``model`` (see the module docstring), in module order."""
    modules = dict(model.named_modules())
    chosen: set[str] = set()
    for name, module in modules.items():
        if next(module.children(), None) is not None or not any(True for _ in module.parameters(recurse=False)):
            continue
        if name in calls:
            chosen.add(name)
            continue
        # Not called by itself: time its parent when the parent holds weights of its own
        # and ran (an attention whose output projection it applies functionally).
        parent = name.rpartition(".")[0] if "." in name else ""
        if parent != name and parent in calls and any(True for _ in modules[parent].parameters(recurse=False)):
            chosen.add(parent)
    # a layer inside another chosen layer is timed as part of it
    return [n for n in modules if n in chosen and not any(o != n and _inside(n, o) for o in chosen)]


def describe_form(module: nn.Module) -> str:
    """A module in one line: ``Class(extra_repr, child=Class(...), ...)``."""
    parts = [module.extra_repr()] if module.extra_repr() else []
    parts += [f"{name}={describe_form(child)}" for name, child in module.named_children()]
    return f"{type(module).__name__}({', '.join(parts)})"


def _check_inputs(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if not isinstance(example_inputs, tuple):
        raise ConfigError(
            f"layer_latency: example_inputs must be a tensor or a tuple of inputs, got {type(example_inputs).__name__}"
        )
    return example_inputs


def _first_tensor(inputs: tuple[Any, ...]) -> Tensor | None:
    return next((x for x in inputs if isinstance(x, Tensor)), None)


def layer_latency(
    dense: nn.Module,
    compact: nn.Module,
    example_inputs: tuple[Any, ...] | Tensor,
    *,
    min_run_time: float = 1.0,
    threads: int | None = None,
    rounds: int | None = None,
    calls_per_round: int | None = None,
    timer: Timer | None = None,
    seed: int = 0,
) -> LayerLatency:
    """Time every compute layer of ``dense`` and its replacement in ``compact``, alone.

    Inputs are captured in one forward pass of each model; then each layer of both
    models and both whole models are timed in the same interleaved short rounds, for
    about ``min_run_time`` seconds in all (ten rounds at least, but at most four times the
    budget once three rounds are done). Runs under
    ``torch.inference_mode`` and eval mode (training flags are restored) with
    ``threads`` intra-op threads. ``timer`` replaces the wall clock; its labels are
    ``"dense"`` and ``"compact"`` for the whole models and ``"dense:<layer>"``,
    ``"compact:<layer>"`` for the layers.
    """
    require_module(dense, "layer_latency: dense")
    require_module(compact, "layer_latency: compact")
    inputs = _check_inputs(example_inputs)
    check_seconds(min_run_time, "min_run_time", "layer_latency")
    check_positive_int(rounds, "rounds", "layer_latency", optional=True)
    check_positive_int(calls_per_round, "calls_per_round", "layer_latency", optional=True)
    n_threads = resolve_threads(threads, "layer_latency")
    first = _first_tensor(inputs)
    clock = timer or wall_timer(first.device if first is not None else None)
    dense_macs = count_macs(dense, inputs).per_module
    compact_macs = count_macs(compact, inputs).per_module
    load = load_average()
    with contextlib.ExitStack() as stack:
        stack.enter_context(eval_mode(dense))
        stack.enter_context(eval_mode(compact))
        stack.enter_context(torch.inference_mode())
        stack.enter_context(torch_threads(n_threads))
        dense_calls, compact_calls = _capture(dense, inputs), _capture(compact, inputs)
        dense_names = _layers(dense, dense_calls)
        compact_modules = dict(compact.named_modules())
        extra_names = [n for n in _layers(compact, compact_calls)
                       if not any(_inside(n, d) or _inside(d, n) for d in dense_names)]
        dense_modules = dict(dense.named_modules())
        runs: dict[str, Callable[[], object]] = {
            "dense": lambda: dense(*inputs),
            "compact": lambda: compact(*inputs),
        }
        for name in dense_names:
            runs[f"dense:{name}"] = _runner(dense_modules[name], dense_calls[name])
        for name in [*dense_names, *extra_names]:
            if name in compact_calls and name in compact_modules:
                runs[f"compact:{name}"] = _runner(compact_modules[name], compact_calls[name])
        plan = plan_rounds(runs, clock, min_run_time, rounds=rounds, calls_per_round=calls_per_round)
        samples = sample_interleaved(runs, plan, clock, seed)
    stats = {label: timing_stats(values, plan.calls[label]) for label, values in samples.items()}
    dense_ms, compact_ms = stats["dense"].median_ms, stats["compact"].median_ms

    def per_pass(label: str, calls: Mapping[str, _Call], name: str) -> float | None:
        return stats[label].median_ms * calls[name].calls if label in stats else None

    rows = []
    for name in [*dense_names, *extra_names]:
        is_dense = name in dense_names
        replacement = compact_modules.get(name)
        d_ms = per_pass(f"dense:{name}", dense_calls, name) if is_dense else None
        c_ms = per_pass(f"compact:{name}", compact_calls, name)
        if c_ms is None:
            c_ms = 0.0  # removed, or present but never called: it costs the compact model nothing
        if replacement is None:
            c_type = c_form = REMOVED
        else:
            c_type = type(replacement).__name__ if is_dense else NEW
            c_form = describe_form(replacement) + ("" if name in compact_calls else f" ({NOT_CALLED})")
        d_macs = dense_macs.get(name, 0) if is_dense else None
        c_macs = compact_macs.get(name, 0)
        rows.append(LayerTiming(
            name=name, kind=type(dense_modules[name]).__name__ if is_dense else None,
            dense_ms=d_ms, compact_ms=c_ms, speedup=_ratio(d_ms, c_ms),
            dense_macs=d_macs, compact_macs=c_macs, mac_ratio=_ratio(d_macs, c_macs),
            dense_share=_ratio(d_ms, dense_ms), compact_share=_ratio(c_ms, compact_ms),
            compact_type=c_type, compact_form=c_form,
            dense_calls=dense_calls[name].calls if is_dense else 0,
            compact_calls=compact_calls[name].calls if name in compact_calls else 0,
            dense_spread=stats[f"dense:{name}"].spread if is_dense else None,
            compact_spread=stats[f"compact:{name}"].spread if f"compact:{name}" in stats else None,
        ))  # fmt: skip
    dense_layers = sum(r.dense_ms or 0.0 for r in rows)
    compact_layers = sum(r.compact_ms or 0.0 for r in rows)
    dense_share, compact_share = _ratio(dense_layers, dense_ms), _ratio(compact_layers, compact_ms)
    result = LayerLatency(
        rows=rows,
        batch_size=first.shape[0] if first is not None and first.dim() > 0 else None,
        dense_ms=dense_ms, compact_ms=compact_ms, speedup=_ratio(dense_ms, compact_ms),
        dense_layers_ms=dense_layers, compact_layers_ms=compact_layers,
        dense_layers_share=dense_share, compact_layers_share=compact_share,
        dense_other_ms=dense_ms - dense_layers, compact_other_ms=compact_ms - compact_layers,
        dense_other_share=None if dense_share is None else 1.0 - dense_share,
        compact_other_share=None if compact_share is None else 1.0 - compact_share,
        threads=n_threads, rounds=len(samples["dense"]), load_average=load, cpu_count=cpu_cores(),
    )  # fmt: skip
    log.info("layer latency: %d layers, dense %.3f ms (layers %.0f%%), compact %.3f ms (layers %.0f%%)",
             len(rows), dense_ms, 100 * (dense_share or 0), compact_ms, 100 * (compact_share or 0))
    return result


def _runner(module: nn.Module, call: _Call) -> Callable[[], object]:
    return lambda: module(*call.args, **call.kwargs)


# --- markdown -------------------------------------------------------------------------------


def _cell(text: Any) -> str:
    """Table-safe text: a ``|`` inside a cell would split it."""
    return str(text).replace("|", "\\|")


def _positive_ratio(numerator: Any, denominator: Any) -> float | None:
    # "other" is a difference and can come out <= 0 from noise: no ratio of such values
    if not (fmt.is_number(numerator) and fmt.is_number(denominator)) or numerator <= 0 or denominator <= 0:
        return None
    return numerator / denominator


def _mac_cell(row: Mapping[str, Any]) -> str:
    dense, compact = row.get("dense_macs"), row.get("compact_macs")
    if fmt.is_number(dense) and dense > 0 and compact == 0:
        return "no MACs left"  # a ratio would be infinite: the replacement does no arithmetic
    return fmt.ratio(row.get("mac_ratio"))


def _ms_and_share(ms: Any, share: Any) -> list[str]:
    return [fmt.millis(ms), fmt.percent(share)]


def layer_latency_markdown(section: LayerLatency | Mapping[str, Any]) -> str:
    """Render a :class:`LayerLatency` (or its dict, read back from JSON) as a markdown table."""
    data = section.as_dict() if isinstance(section, LayerLatency) else dict(section)
    header = ["layer", "kind", "dense ms", "dense share", "compact ms", "compact share", "speedup",
              "MAC ratio", "compact form"]
    table_rows = []
    for row in data.get("rows") or []:
        if not isinstance(row, Mapping):
            continue
        speedup = fmt.ratio(row.get("speedup"))
        if row.get("compact_type") == REMOVED:
            speedup = REMOVED
        table_rows.append([
            f"`{row.get('name') or '(root)'}`", _cell(row.get("kind") or fmt.MISSING),
            *_ms_and_share(row.get("dense_ms"), row.get("dense_share")),
            *_ms_and_share(row.get("compact_ms"), row.get("compact_share")),
            speedup, _mac_cell(row),
            f"`{_cell(row['compact_form'])}`" if row.get("compact_form") not in (None, REMOVED) else REMOVED,
        ])  # fmt: skip
    table_rows.append(["other (pooling, activations, glue)", "",
                       *_ms_and_share(data.get("dense_other_ms"), data.get("dense_other_share")),
                       *_ms_and_share(data.get("compact_other_ms"), data.get("compact_other_share")),
                       fmt.ratio(_positive_ratio(data.get("dense_other_ms"), data.get("compact_other_ms"))), "", ""])
    table_rows.append(["**whole model**", "", fmt.millis(data.get("dense_ms")), fmt.percent(1.0),
                       fmt.millis(data.get("compact_ms")), fmt.percent(1.0), fmt.ratio(data.get("speedup")), "", ""])
    load = data.get("load_average")
    note = (f"\nEach layer timed alone on the input it receives in its model (batch {data.get('batch_size') or '?'}), "
            f"per forward pass of the model; dense and compact interleaved in {data.get('rounds') or '?'} rounds; "
            f"threads: {data.get('threads') or '?'}, load average {fmt.number(load, 3)} at the start, "
            f"CPU cores: {data.get('cpu_count') or '?'}. \"other\" is the model's time minus its layers' "
            "(a negative value means the layers ran faster inside the model than alone).\n")
    return fmt.table(header, table_rows) + note
