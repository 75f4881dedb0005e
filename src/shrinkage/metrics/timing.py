"""Interleaved timing in many short rounds, shared by whole-model and per-layer latency.

Every candidate (a model, or one layer on its captured input) is a ``run``: a callable
without arguments. Each round times every run once, for a small fixed number of calls,
in a freshly shuffled order; a run's samples are its per-call times, one per round. Why
so: load from other processes, frequency scaling and thermal throttling drift over
seconds and arrive in bursts of milliseconds. Long blocks timed one candidate after
the other let drift pass for a speed difference; short interleaved rounds expose all
candidates to the same conditions, a burst spoils a few rounds whose samples the
median discards, and the shuffle keeps any candidate from always running first (on a
cold cache) or right after the same neighbour.

The clock sits behind a :data:`Timer`, so tests inject made-up durations instead of
asserting on wall-clock time.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from shrinkage.errors import ConfigError, ShrinkageError

#: ``timer(label, run, calls)`` calls ``run()`` ``calls`` times and returns the seconds taken.
#: ``label`` names what runs (a model name, ``"dense:conv1"``); a fake timer may return
#: durations of its own making from it without calling ``run`` at all.
Timer = Callable[[str, Callable[[], object], int], float]

# Untimed calls before calibrating: first calls pay for allocator growth, lazy kernel
# selection and cache misses that a deployed model does not pay per request.
WARMUP_CALLS = 3
# One run's share of a round. Short enough that a preemption spoils only the rounds it
# hits, long enough that the clock and a device synchronization (microseconds) vanish.
_BLOCK_SECONDS = 0.002
_MAX_CALLS = 1000
MIN_ROUNDS = 10
MAX_ROUNDS = 2000
# A hard stop: where ten rounds would take more than this many budgets (very slow calls),
# stop after at least three rounds, so the time stays bounded.
_HARD_STOP_BUDGETS = 4.0
_FEWEST_ROUNDS = 3


@dataclass(frozen=True)
class TimingStats:
    """Statistics of one run's per-call times, one sample per round (milliseconds).

    Attributes:
        median_ms: median over rounds of the per-call time.
        min_ms: fastest round's per-call time (what the code costs without interference).
        iqr_ms: inter-quartile range (linear interpolation between samples).
        spread: ``iqr_ms / median_ms``; a few percent on a quiet machine, far more under load.
        rounds: number of samples.
        calls_per_round: calls timed together in each round.
    """

    median_ms: float
    min_ms: float
    iqr_ms: float
    spread: float | None
    rounds: int
    calls_per_round: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def timing_stats(samples_ms: Sequence[float], calls_per_round: int = 1) -> TimingStats:
    """Median, minimum, inter-quartile range and relative spread of per-call times."""
    if not samples_ms:
        raise ShrinkageError("timing_stats: no samples")
    values = sorted(float(v) for v in samples_ms)
    if len(values) > 1:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    median = statistics.median(values)
    iqr = q3 - q1
    return TimingStats(
        median_ms=median,
        min_ms=values[0],
        iqr_ms=iqr,
        spread=iqr / median if median > 0 else None,
        rounds=len(values),
        calls_per_round=calls_per_round,
    )


def wall_timer(device: torch.device | str | None = None) -> Timer:
    """The real timer: ``time.perf_counter`` around the calls, with the device synchronized.

    CUDA and MPS kernels run asynchronously: without a synchronization before the start
    the clock would include work queued earlier, and without one at the end it would
    stop when the last kernel was *queued*, not when it finished.
    """
    synchronize = _synchronizer(torch.device(device) if device is not None else None)

    def timer(label: str, run: Callable[[], object], calls: int) -> float:
        synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            run()
        synchronize()
        return time.perf_counter() - start

    return timer


def _synchronizer(device: torch.device | None) -> Callable[[], None]:
    if device is not None and device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device is not None and device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def load_average() -> float | None:
    """The 1-minute load average, or ``None`` where the platform has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


#: environment variables that change how the CPU thread pools behave: a timing records them
THREAD_ENVIRONMENT = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "KMP_BLOCKTIME", "ONEDNN_MAX_CPU_ISA")


def thread_environment() -> dict[str, str]:
    """The :data:`THREAD_ENVIRONMENT` variables set in this process. ``OMP_WAIT_POLICY=PASSIVE``
    (idle threads sleep instead of spinning) slows multi-threaded LAPACK calls and short
    parallel regions, so timings taken with and without it are not comparable."""
    return {key: os.environ[key] for key in THREAD_ENVIRONMENT if key in os.environ}


def cpu_cores() -> int | None:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def resolve_threads(threads: int | None, what: str) -> int:
    """``threads`` checked, or torch's current intra-op thread count when ``None``."""
    # torch.utils.benchmark defaults to ONE thread, which silently under-reports a
    # multi-core deployment; default to what torch uses outside the timer instead.
    if threads is None:
        return torch.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"{what}: threads must be a positive integer, got {threads!r}")
    return threads


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads, restoring the previous count after."""
    previous = torch.get_num_threads()
    if threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def check_positive_int(value: Any, key: str, what: str, *, optional: bool = False) -> None:
    """One-line ConfigError unless ``value`` is an int >= 1 (or ``None`` when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what}: {key} must be a positive integer, got {value!r}")


def check_seconds(value: Any, key: str, what: str) -> None:
    """One-line ConfigError unless ``value`` is a finite number of seconds > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what}: {key} must be a number of seconds > 0, got {value!r}")


@dataclass(frozen=True)
class RoundPlan:
    """How many calls each run gets per round, and when to stop.

    ``rounds`` fixes the number of rounds; when ``None``, rounds go on until the timed
    seconds reach ``budget_s`` (at least ``MIN_ROUNDS``, at most ``MAX_ROUNDS``; but
    never past four budgets once three rounds are done).
    """

    calls: dict[str, int]
    budget_s: float
    rounds: int | None = None


def _elapsed(timer: Timer, label: str, run: Callable[[], object], calls: int) -> float:
    seconds = timer(label, run, calls)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        raise ShrinkageError(f"latency: the timer returned {seconds!r} for {label!r}; expected seconds >= 0")
    return float(seconds)


def plan_rounds(
    runs: Mapping[str, Callable[[], object]],
    timer: Timer,
    budget_s: float,
    *,
    rounds: int | None = None,
    calls_per_round: int | None = None,
    same_calls: bool = False,
) -> RoundPlan:
    """Warm every run up, time a few single calls of each, and size each run's block.

    Each run gets about ``_BLOCK_SECONDS`` per round (``same_calls``: all runs the calls
    of the slowest, so models compared side by side run equally often). A call's cost is
    the median of three single calls after the warm-up: one call preempted by another
    process would otherwise make every block a single call.
    """
    per_call: dict[str, float] = {}
    for label, run in runs.items():
        for _ in range(WARMUP_CALLS):
            run()
        per_call[label] = statistics.median(_elapsed(timer, label, run, 1) for _ in range(3))

    def calls_for(seconds: float) -> int:
        if calls_per_round is not None:
            return calls_per_round
        return min(_MAX_CALLS, max(1, round(_BLOCK_SECONDS / seconds))) if seconds > 0 else _MAX_CALLS

    slowest = max(per_call.values(), default=0.0)
    calls = {label: calls_for(slowest if same_calls else seconds) for label, seconds in per_call.items()}
    return RoundPlan(calls=calls, budget_s=budget_s, rounds=rounds)


def sample_interleaved(
    runs: Mapping[str, Callable[[], object]], plan: RoundPlan, timer: Timer, seed: int = 0
) -> dict[str, list[float]]:
    """Per-call milliseconds of every run, one sample per round, runs shuffled in each round.

    Without a fixed round count, rounds stop once the timed seconds (as the timer
    reports them, so a fake timer stops the loop deterministically) reach the budget,
    which bounds the time even where a loaded machine made the calibration optimistic.
    The shuffle uses its own seeded generator: the global random state stays untouched
    and a run is reproducible in its order.
    """
    order = list(runs)
    shuffler = random.Random(seed)
    samples: dict[str, list[float]] = {label: [] for label in order}
    spent, done = 0.0, 0
    while True:
        if plan.rounds is not None and done >= plan.rounds:
            break
        if plan.rounds is None and (
            done >= MAX_ROUNDS
            or (done >= MIN_ROUNDS and spent >= plan.budget_s)
            or (done >= _FEWEST_ROUNDS and spent >= _HARD_STOP_BUDGETS * plan.budget_s)
        ):
            break
        shuffler.shuffle(order)
        for label in order:
            calls = plan.calls[label]
            seconds = _elapsed(timer, label, runs[label], calls)
            spent += seconds
            samples[label].append(seconds * 1e3 / calls)
        done += 1
    return samples
