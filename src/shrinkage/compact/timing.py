"""Short, interleaved timings of candidate layers on one input, cached in-process.

Choosing a layer's form by speed needs only a ranking of a few candidates, not a
benchmark: each candidate runs a few rounds, in an order rotated every round so a
background load spike hits all of them alike, and the median per candidate is kept.
The results are cached by what decides them (the candidate's structure, the input's
shape, dtype and device, the thread count, the timer), so compacting the same
architecture again costs no timing at all.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor, nn

#: ``(modules, x) -> seconds per call of each module on x``: the measurement, replaceable
#: (tests inject a fake one to make a measured choice deterministic)
Timer = Callable[[Sequence[nn.Module], Tensor], Sequence[float]]

_CACHE: dict[Hashable, float] = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_seconds(
    modules: Sequence[nn.Module], x: Tensor, *, rounds: int = 5, sample_seconds: float = 2e-3
) -> list[float]:
    """Median seconds per call of each module on ``x``, over ``rounds`` interleaved rounds.

    Every module is warmed up once (allocator, kernel selection), then a round runs each
    module for about ``sample_seconds`` (at least one call), starting with a different
    module every round.
    """
    device = x.device
    calls: list[int] = []
    samples: list[list[float]] = [[] for _ in modules]
    with torch.no_grad():
        for m in modules:
            m(x)
            _sync(device)
            start = time.perf_counter()
            m(x)
            _sync(device)
            once = time.perf_counter() - start
            calls.append(max(1, min(100, int(sample_seconds / max(once, 1e-7)))))
        for r in range(rounds):
            for k in range(len(modules)):
                i = (k + r) % len(modules)
                _sync(device)
                start = time.perf_counter()
                for _ in range(calls[i]):
                    modules[i](x)
                _sync(device)
                samples[i].append((time.perf_counter() - start) / calls[i])
    return [statistics.median(s) for s in samples]


def signature(module: nn.Module) -> tuple[Hashable, ...]:
    """What a layer's speed depends on besides its input: its structure (the repr names
    types, widths, kernel, stride, padding, ...) and its tensors' shapes and dtypes."""
    tensors = [(n, tuple(t.shape), str(t.dtype)) for n, t in (*module.named_parameters(), *module.named_buffers())]
    return (repr(module), tuple(tensors))


def cache_key(timer: Hashable, form: str, module: nn.Module, x: Tensor) -> tuple[Hashable, ...]:
    """The cache key of one candidate's timing: timer, form, structure, input and threads."""
    return (timer, form, signature(module), tuple(x.shape), str(x.dtype), str(x.device), torch.get_num_threads())


def cached(key: Hashable) -> float | None:
    return _CACHE.get(key)


def remember(key: Hashable, seconds: float) -> None:
    _CACHE[key] = seconds


def clear_timing_cache() -> None:
    """Forget every timing (e.g. after changing the machine's load or thread settings)."""
    _CACHE.clear()
