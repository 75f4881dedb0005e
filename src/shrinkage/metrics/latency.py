"""Wall-clock inference latency, alone or side by side.

Timing uses ``torch.utils.benchmark.Timer.blocked_autorange``, which picks a block
size so each measurement is long enough to be timed accurately and reports the
median and inter-quartile range across blocks. Latencies are noisy; compare models
with :func:`compare_latency`, never across separate runs.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from shrinkage.errors import ConfigError
from shrinkage.metrics._common import eval_mode, require_module

if TYPE_CHECKING:
    from torch.utils.benchmark import Measurement

log = logging.getLogger(__name__)

# Untimed calls before measuring: first calls pay for allocator growth, lazy kernel
# selection and cache misses that a deployed model does not pay per request.
_WARMUP_CALLS = 3


@dataclass(frozen=True)
class Latency:
    """One model's latency on one input.

    Attributes:
        median_ms: median time per call over the measured blocks, in milliseconds.
        iqr_ms: inter-quartile range of the per-call times, in milliseconds.
        measurements: number of timed blocks the statistics are computed from.
        threads: intra-op threads torch used while timing.
    """

    median_ms: float
    iqr_ms: float
    measurements: int
    threads: int


@dataclass(frozen=True)
class LatencyComparison:
    """Models compared at one batch size; the first model is the reference.

    Attributes:
        batch_size: the batch size passed to ``make_input``.
        median_ms: per model, median over rounds of each round's median, in ms.
        speedup: per model, ``reference median / model median`` (reference is 1.0).
        reference: name of the reference model.
        threads: intra-op threads torch used while timing.
    """

    batch_size: int
    median_ms: dict[str, float]
    speedup: dict[str, float]
    reference: str
    threads: int


def _resolve_threads(threads: int | None) -> int:
    # Timer defaults to ONE thread, which would silently under-report a multi-core
    # deployment; default to what torch would use outside the timer instead.
    if threads is None:
        return torch.get_num_threads()
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"latency: threads must be a positive integer, got {threads!r}")
    return threads


def _check_run_time(min_run_time: float) -> None:
    if not min_run_time > 0:
        raise ConfigError(f"latency: min_run_time must be > 0 seconds, got {min_run_time!r}")


def _timed(model: nn.Module, example_input: Tensor, min_run_time: float, threads: int) -> Measurement:
    """Warm up, then ``blocked_autorange``; caller provides eval/inference mode."""
    # Imported here: importing torch.utils.benchmark probes for a C++ toolchain and
    # logs a warning on machines without CUDA, which plain metric users should not see.
    from torch.utils.benchmark import Timer

    timer = Timer(
        stmt="model(x)",
        globals={"model": model, "x": example_input},
        num_threads=threads,
    )
    timer.timeit(number=_WARMUP_CALLS)
    return timer.blocked_autorange(min_run_time=min_run_time)


def measure_latency(
    model: nn.Module,
    example_input: Tensor,
    *,
    min_run_time: float = 0.5,
    threads: int | None = None,
) -> Latency:
    """Time ``model(example_input)`` under ``torch.inference_mode`` in eval mode.

    ``threads`` defaults to ``torch.get_num_threads()``. The model's training flags
    are restored afterwards.
    """
    require_module(model, "measure_latency")
    _check_run_time(min_run_time)
    n_threads = _resolve_threads(threads)
    with eval_mode(model), torch.inference_mode():
        measurement = _timed(model, example_input, min_run_time, n_threads)
    return Latency(
        median_ms=measurement.median * 1e3,
        iqr_ms=measurement.iqr * 1e3,
        measurements=len(measurement.times),
        threads=n_threads,
    )


def _check_compare_args(
    models: Mapping[str, nn.Module], batch_sizes: Sequence[int], repeats: int
) -> None:
    if not models:
        raise ConfigError("compare_latency: models is empty; give at least a reference model")
    for name, model in models.items():
        require_module(model, f"compare_latency: models[{name!r}]")
    for size in batch_sizes:
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"compare_latency: batch size {size!r} is not a positive integer")
    if not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"compare_latency: repeats must be a positive integer, got {repeats!r}")


def compare_latency(
    models: Mapping[str, nn.Module],
    make_input: Callable[[int], Tensor],
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 5,
    min_run_time: float = 0.3,
    *,
    threads: int | None = None,
) -> list[LatencyComparison]:
    """Measure several models side by side and report speedups over the first one.

    For each batch size the models are timed in interleaved rounds (A, B, A, B, ...),
    ``repeats`` rounds of one ``blocked_autorange`` per model, and each model's
    latency is the median of its round medians. Why interleave: background load,
    thermal throttling and frequency scaling drift over seconds, and timing all of A
    then all of B lets such drift masquerade as a speed difference. Interleaving
    exposes both models to the same noise, and the median over rounds discards
    rounds that a burst of noise hit.

    Everything runs in ONE call, under ``torch.inference_mode`` and eval mode
    (training flags are restored). ``make_input(batch_size)`` must return a tensor on
    the models' device; one input per batch size is shared by all models.
    """
    _check_compare_args(models, batch_sizes, repeats)
    _check_run_time(min_run_time)
    n_threads = _resolve_threads(threads)
    names = list(models)
    reference = names[0]
    results: list[LatencyComparison] = []
    for batch_size in batch_sizes:
        example_input = make_input(batch_size)
        if not isinstance(example_input, Tensor):
            raise ConfigError(
                f"compare_latency: make_input({batch_size}) returned {type(example_input).__name__}, not a Tensor"
            )
        rounds: dict[str, list[float]] = {name: [] for name in names}
        for round_index in range(repeats):
            for name in names:
                model = models[name]
                with eval_mode(model), torch.inference_mode():
                    measurement = _timed(model, example_input, min_run_time, n_threads)
                rounds[name].append(measurement.median * 1e3)
                log.debug("latency batch=%d round=%d %s: %.4f ms", batch_size, round_index, name,
                          rounds[name][-1])
        median_ms = {name: statistics.median(times) for name, times in rounds.items()}
        speedup = {name: median_ms[reference] / median_ms[name] for name in names}
        results.append(LatencyComparison(batch_size, median_ms, speedup, reference, n_threads))
        log.info("latency batch=%d: %s", batch_size,
                 ", ".join(f"{n} {median_ms[n]:.3f} ms (x{speedup[n]:.2f})" for n in names))
    return results
