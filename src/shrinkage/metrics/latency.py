"""Wall-clock inference latency, alone or side by side, with a control that says whether to trust it.

Models are timed in many short interleaved rounds (:mod:`shrinkage.metrics.timing`).
:func:`compare_latency` also times the reference model against an identical copy of
itself in the same rounds: the two do the same work, so their ratio should be 1.0.
When it is off by more than a tolerance, the machine was too noisy (or too busy) to
resolve differences of that size, and the comparison is flagged unreliable with the
reason, instead of passing noise off as a speedup. Compare models with
:func:`compare_latency`, never across separate runs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from shrinkage.errors import ConfigError, ShrinkageError
from shrinkage.metrics._common import eval_mode, require_module
from shrinkage.metrics.timing import (
    Timer,
    TimingStats,
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

#: default control tolerance: the identical copy may come out at most 5% off the reference
CONTROL_TOLERANCE = 0.05


@dataclass(frozen=True)
class Latency:
    """One model's latency on one input.

    Attributes:
        median_ms: median over rounds of the per-call time, in milliseconds.
        iqr_ms: inter-quartile range of the per-call times, in milliseconds.
        measurements: number of timed rounds the statistics are computed from.
        threads: intra-op threads torch used while timing.
        min_ms: fastest round's per-call time.
        spread: ``iqr_ms / median_ms``.
        load_average: 1-minute load average when timing started (``None``: not available).
        cpu_count: CPU cores the process may use.
    """

    median_ms: float
    iqr_ms: float
    measurements: int
    threads: int
    min_ms: float | None = None
    spread: float | None = None
    load_average: float | None = None
    cpu_count: int | None = None


@dataclass(frozen=True)
class LatencyComparison:
    """Models compared at one batch size; the first model is the reference.

    Attributes:
        batch_size: the batch size passed to ``make_input``.
        median_ms: per model, median over rounds of the per-call time, in ms.
        speedup: per model, ``reference median / model median`` (reference is 1.0).
        reference: name of the reference model.
        threads: intra-op threads torch used while timing.
        stats: per model, median, minimum, IQR and relative spread (:class:`TimingStats`).
        control: the identical copy of the reference, timed in the same rounds
            (``None`` when the control was switched off).
        control_ratio: ``reference median / copy median``; 1.0 on a quiet machine.
        reliable: whether ``control_ratio`` is within ``tolerance`` of 1.0 (``None``: no control).
        reason: one line saying what the control measured and, if unreliable, why.
        tolerance: the control's allowed relative deviation from 1.0.
        load_average: 1-minute load average when this batch size started (``None``: not available).
        cpu_count: CPU cores the process may use.
        device: where the input (and so the models) lived.
    """

    batch_size: int
    median_ms: dict[str, float]
    speedup: dict[str, float | None]
    reference: str
    threads: int
    stats: dict[str, TimingStats] = field(default_factory=dict)
    control: TimingStats | None = None
    control_ratio: float | None = None
    reliable: bool | None = None
    reason: str = ""
    tolerance: float = CONTROL_TOLERANCE
    load_average: float | None = None
    cpu_count: int | None = None
    device: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (nested statistics become dicts)."""
        return asdict(self)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def measure_latency(
    model: nn.Module,
    example_input: Tensor,
    *,
    min_run_time: float = 0.5,
    threads: int | None = None,
    timer: Timer | None = None,
) -> Latency:
    """Time ``model(example_input)`` under ``torch.inference_mode`` in eval mode.

    About ``min_run_time`` seconds (ten short rounds at least, unless calls are very slow:
    then at most four times that). ``threads`` defaults to
    ``torch.get_num_threads()``; ``timer`` replaces the wall clock (tests). The model's
    training flags are restored afterwards.
    """
    require_module(model, "measure_latency")
    check_seconds(min_run_time, "min_run_time", "measure_latency")
    n_threads = resolve_threads(threads, "measure_latency")
    if not isinstance(example_input, Tensor):
        raise ConfigError(f"measure_latency: example_input must be a Tensor, got {type(example_input).__name__}")
    load = load_average()
    timer = timer or wall_timer(example_input.device)
    with eval_mode(model), torch.inference_mode(), torch_threads(n_threads):
        runs = {"model": lambda: model(example_input)}
        plan = plan_rounds(runs, timer, min_run_time)
        stats = timing_stats(sample_interleaved(runs, plan, timer)["model"], plan.calls["model"])
    return Latency(
        median_ms=stats.median_ms,
        iqr_ms=stats.iqr_ms,
        measurements=stats.rounds,
        threads=n_threads,
        min_ms=stats.min_ms,
        spread=stats.spread,
        load_average=load,
        cpu_count=cpu_cores(),
    )


def _check_compare_args(
    models: Mapping[str, nn.Module],
    batch_sizes: Sequence[int],
    repeats: int,
    min_run_time: float,
    control_tolerance: float,
    rounds: int | None,
    calls_per_round: int | None,
) -> None:
    if not isinstance(models, Mapping) or not models:
        raise ConfigError("compare_latency: models is empty; give at least a reference model")
    for name, model in models.items():
        if not isinstance(name, str):
            raise ConfigError(f"compare_latency: model names must be strings, got {name!r}")
        require_module(model, f"compare_latency: models[{name!r}]")
    if isinstance(batch_sizes, str | bytes) or not isinstance(batch_sizes, Sequence):
        raise ConfigError(f"compare_latency: batch_sizes must be a sequence of integers, got {batch_sizes!r}")
    for size in batch_sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"compare_latency: batch size {size!r} is not a positive integer")
    check_positive_int(repeats, "repeats", "compare_latency")
    check_seconds(min_run_time, "min_run_time", "compare_latency")
    check_positive_int(rounds, "rounds", "compare_latency", optional=True)
    check_positive_int(calls_per_round, "calls_per_round", "compare_latency", optional=True)
    tolerance_ok = isinstance(control_tolerance, int | float) and not isinstance(control_tolerance, bool)
    if not tolerance_ok or not math.isfinite(control_tolerance) or control_tolerance <= 0:
        raise ConfigError(f"compare_latency: control_tolerance must be a number > 0, got {control_tolerance!r}")


def _control_name(reference: str, names: Sequence[str]) -> str:
    name = f"{reference} (identical copy)"
    while name in names:
        name += "'"
    return name


def _identical_copy(model: nn.Module, reference: str) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as error:  # any failure to copy means: no control, said plainly
        raise ShrinkageError(
            f"compare_latency: cannot copy the reference model {reference!r} for the control "
            f"({type(error).__name__}: {error}); pass control=False"
        ) from None


def _verdict(ratio: float | None, tolerance: float, load: float | None, cores: int | None) -> tuple[bool, str]:
    machine = f"; load average {load:.2f} on {cores} cores" if load is not None else ""
    if ratio is None:
        return False, "the identical copy of the reference timed at 0 ms: the timer cannot resolve this model" + machine
    off = abs(ratio - 1.0)
    if off > tolerance:
        return False, (f"the reference timed against an identical copy came out {ratio:.3f}x, {off:.1%} off 1.0 "
                       f"(limit {tolerance:.0%}): noise of that size swamps the speedups{machine}")
    return True, f"the reference timed against an identical copy came out {ratio:.3f}x (within {tolerance:.0%} of 1.0)"


def compare_latency(
    models: Mapping[str, nn.Module],
    make_input: Callable[[int], Tensor],
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 5,
    min_run_time: float = 0.3,
    *,
    threads: int | None = None,
    control: bool = True,
    control_tolerance: float = CONTROL_TOLERANCE,
    rounds: int | None = None,
    calls_per_round: int | None = None,
    timer: Timer | None = None,
    seed: int = 0,
) -> list[LatencyComparison]:
    """Measure several models side by side and report speedups over the first one.

    For each batch size every model, and (``control=True``) an identical copy of the
    reference made with ``copy.deepcopy``, is timed in many short rounds; each round
    times every model once for the same small number of calls, in a shuffled order.
    Each model's latency is the median of its per-round times; the timing takes about
    ``repeats * min_run_time`` seconds per model and batch size (ten rounds at least,
    but never past four times that once three rounds are done; ``rounds`` and
    ``calls_per_round`` override the sizing). The copy does exactly the reference's
    work, so ``reference / copy`` should come out 1.0; when it is off by more than
    ``control_tolerance`` the comparison is marked ``reliable=False`` with a one-line
    ``reason``, and a warning is logged.

    Everything runs in ONE call, under ``torch.inference_mode`` and eval mode
    (training flags are restored), with ``threads`` intra-op threads (default: torch's
    current count). ``make_input(batch_size)`` must return a tensor on the models'
    device; one input per batch size is shared by all models. ``timer`` replaces the
    wall clock (see :data:`shrinkage.metrics.timing.Timer`); the copy's label is
    ``"<reference> (identical copy)"``.
    """
    _check_compare_args(models, batch_sizes, repeats, min_run_time, control_tolerance, rounds, calls_per_round)
    n_threads = resolve_threads(threads, "compare_latency")
    names = list(models)
    reference = names[0]
    timed = dict(models)
    control_name = None
    if control:
        control_name = _control_name(reference, names)
        timed[control_name] = _identical_copy(models[reference], reference)
    results: list[LatencyComparison] = []
    for batch_size in batch_sizes:
        example_input = make_input(batch_size)
        if not isinstance(example_input, Tensor):
            raise ConfigError(
                f"compare_latency: make_input({batch_size}) returned {type(example_input).__name__}, not a Tensor"
            )
        load, cores = load_average(), cpu_cores()
        clock = timer or wall_timer(example_input.device)
        with contextlib.ExitStack() as stack:
            for model in timed.values():
                stack.enter_context(eval_mode(model))
            stack.enter_context(torch.inference_mode())
            stack.enter_context(torch_threads(n_threads))
            runs = {name: (lambda m=model: m(example_input)) for name, model in timed.items()}
            plan = plan_rounds(runs, clock, repeats * min_run_time * len(runs), rounds=rounds,
                               calls_per_round=calls_per_round, same_calls=True)
            samples = sample_interleaved(runs, plan, clock, seed)
        stats = {name: timing_stats(samples[name], plan.calls[name]) for name in timed}
        median_ms = {name: stats[name].median_ms for name in names}
        speedup = {name: _ratio(median_ms[reference], median_ms[name]) for name in names}
        comparison = LatencyComparison(
            batch_size=batch_size, median_ms=median_ms, speedup=speedup, reference=reference, threads=n_threads,
            stats={name: stats[name] for name in names}, tolerance=control_tolerance,
            load_average=load, cpu_count=cores, device=str(example_input.device),
        )
        if control_name is not None:
            ratio = _ratio(median_ms[reference], stats[control_name].median_ms)
            reliable, reason = _verdict(ratio, control_tolerance, load, cores)
            comparison = replace(comparison, control=stats[control_name], control_ratio=ratio,
                                 reliable=reliable, reason=reason)
            if not reliable:
                log.warning("latency batch=%d is unreliable: %s", batch_size, reason)
        results.append(comparison)
        # the rounds actually run: plan.rounds is None when the time budget decides them
        log.info("latency batch=%d (%d rounds x %d calls): %s", batch_size, stats[reference].rounds,
                 plan.calls[reference], ", ".join(f"{n} {median_ms[n]:.3f} ms (x{_text(speedup[n])})" for n in names))
    return results


def _text(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "?"
