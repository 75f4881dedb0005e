"""How one of a layer's exact forms is chosen, and the record of that choice.

Two policies: :class:`Measured` times every candidate on the layer's actual input
shape on the device it will run on (see :mod:`shrinkage.compact.timing`) and takes
the fastest; :class:`ByMacs` takes the fewest multiply-accumulates, ties going to the
simplest form, and never looks at a clock. Either way the choice is recorded as a
:class:`FormChoice`: every candidate with its MACs (and time, when measured).
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from shrinkage.compact import timing
from shrinkage.errors import ConfigError, ShrinkageError


@dataclass(frozen=True)
class Candidate:
    """One exact form of a layer, built and counted on the layer's input."""

    form: str
    simplicity: int  # equal MACs: the lowest wins
    module: nn.Module
    macs: int


@dataclass(frozen=True)
class CandidateCost:
    """What one candidate form cost: MACs on the recorded input, and seconds per call
    (``None`` when the choice was not measured)."""

    form: str
    macs: int
    seconds: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"form": self.form, "macs": self.macs, "seconds": self.seconds}


@dataclass(frozen=True)
class FormChoice:
    """The form a layer was given, how it was chosen (``by``) and every candidate's cost."""

    layer: str
    chosen: str
    by: str
    input_shape: tuple[int, ...]
    candidates: tuple[CandidateCost, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "by": self.by, "input_shape": list(self.input_shape),
                "candidates": [c.as_dict() for c in self.candidates]}  # fmt: skip


class FormPolicy(ABC):
    """Chooses one of a layer's candidate forms."""

    #: how the choice was made, as the record says it
    label: ClassVar[str]

    @abstractmethod
    def choose(self, layer: str, candidates: Sequence[Candidate], x: Tensor, device: torch.device) -> FormChoice:
        """Pick one of ``candidates`` (all exact) for the layer fed with ``x`` on ``device``."""


def _record(layer: str, by: str, candidates: Sequence[Candidate], pick: int, x: Tensor,
            seconds: Sequence[float | None]) -> FormChoice:  # fmt: skip
    costs = tuple(CandidateCost(c.form, c.macs, s) for c, s in zip(candidates, seconds, strict=True))
    return FormChoice(layer, candidates[pick].form, by, tuple(x.shape), costs)


@dataclass(frozen=True)
class ByMacs(FormPolicy):
    """The fewest MACs; ties go to the simplest form. Deterministic: no clock involved."""

    label: ClassVar[str] = "fewest MACs"

    def choose(self, layer: str, candidates: Sequence[Candidate], x: Tensor, device: torch.device) -> FormChoice:
        pick = min(range(len(candidates)), key=lambda i: (candidates[i].macs, candidates[i].simplicity, i))
        return _record(layer, self.label, candidates, pick, x, [None] * len(candidates))


@dataclass(frozen=True)
class Measured(FormPolicy):
    """The fastest on the layer's actual input shape on the device it runs on.

    ``rounds`` interleaved rounds per candidate (median kept); ``timer`` replaces the
    measurement (``(modules, x) -> seconds per call of each``): tests inject a fake one.
    ``batch_size`` times every candidate at that batch (the layer's recorded input,
    repeated) instead of the example's: the fastest form at batch 1 is not always the
    fastest at the batch the model will serve (a lowered GEMM can win at 1 and lose at 16).
    Timings are cached in-process per candidate structure, input shape, dtype, device,
    thread count and timer; :func:`shrinkage.compact.timing.clear_timing_cache` forgets them.
    """

    rounds: int = 5
    timer: timing.Timer | None = None
    batch_size: int | None = None
    label: ClassVar[str] = "measured"

    def __post_init__(self) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"Measured: rounds must be a positive integer, got {self.rounds!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):  # fmt: skip
            raise ConfigError(f"Measured: batch_size must be a positive integer, got {self.batch_size!r}")
        if self.timer is not None and not callable(self.timer):
            raise ConfigError(f"Measured: timer must be callable (modules, x) -> seconds, got {self.timer!r}")

    def _measure(self, modules: Sequence[nn.Module], x: Tensor) -> Sequence[float]:
        if self.timer is not None:
            return self.timer(modules, x)
        return timing.interleaved_seconds(modules, x, rounds=self.rounds)

    def choose(self, layer: str, candidates: Sequence[Candidate], x: Tensor, device: torch.device) -> FormChoice:
        x = x.to(device)
        if self.batch_size is not None and x.dim() > 0 and x.shape[0] != self.batch_size:
            x = x[:1].expand(self.batch_size, *x.shape[1:]).contiguous()
        timer_id = self.timer if self.timer is not None else ("interleaved", self.rounds)
        keys = [timing.cache_key(timer_id, c.form, c.module, x) for c in candidates]
        seconds: list[float | None] = [timing.cached(k) for k in keys]
        missing = [i for i, s in enumerate(seconds) if s is None]
        if missing:
            modules = [_on(candidates[i].module, device).eval() for i in missing]
            measured = list(self._measure(modules, x))
            if len(measured) != len(missing) or not all(isinstance(s, (int, float)) and math.isfinite(s) and s >= 0
                                                        for s in measured):  # fmt: skip
                raise ShrinkageError(
                    f"timing the forms of layer '{layer}': the timer returned {measured!r} "
                    f"for {len(missing)} candidates"
                )
            for i, s in zip(missing, measured, strict=True):
                seconds[i] = float(s)
                timing.remember(keys[i], float(s))
        pick = min(range(len(candidates)), key=lambda i: (seconds[i], candidates[i].macs, candidates[i].simplicity))
        return _record(layer, self.label, candidates, pick, x, seconds)


def _on(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` on ``device``; a copy when it lives elsewhere (the candidate stays as built)."""
    here = next((t.device for t in (*module.parameters(), *module.buffers())), device)
    return module if here == device else copy.deepcopy(module).to(device)


# Why measured by default: MACs do not predict speed here. A lowered GEMM over the kept
# columns has the fewest MACs yet ran at 0.13x the dense conv's speed on AlexNet's conv1,
# while a plain conv over the kept channels ran at 1.36x; users call compact() for speed.
# The measured choice depends on the machine and its load, so the test suite (and anyone
# who needs a reproducible MAC count, e.g. a search against a MAC budget) sets ByMacs,
# process-wide here or per call with CompactOptions(choose_by=...).
_default: list[FormPolicy] = [Measured()]


def default_policy() -> FormPolicy:
    """The policy used where none is given (``CompactOptions.choose_by=None``, ``factorize``)."""
    return _default[0]


def set_default_policy(policy: FormPolicy) -> FormPolicy:
    """Make ``policy`` the process-wide default; returns the previous one."""
    if not isinstance(policy, FormPolicy):
        raise ConfigError(f"default form policy must be a FormPolicy (Measured(), ByMacs()), got {policy!r}")
    previous, _default[0] = _default[0], policy
    return previous
