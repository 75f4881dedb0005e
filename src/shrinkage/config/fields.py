"""Validation helpers shared by the config dataclasses.

Checks raise :class:`FieldError`, which carries the name of the offending field. The
loader catches it and re-raises a :class:`ConfigError` whose message names the full
dotted key (``train.lr``) and the file, because a dataclass does not know where in
the YAML tree it sits.
"""

from __future__ import annotations

import math
from typing import Any

from shrinkage.errors import ConfigError

# Upper bounds of integer settings. They are far above any sensible run, yet low enough
# that a typo (an extra zero, a wrong unit) fails at load time instead of running for
# years or failing deep inside torch.
#: torch.manual_seed takes 64-bit values; staying in the signed range keeps the seed an
#: exact integer in every format it is written to (YAML, JSON, C long long)
MAX_SEED = 2**63 - 1
MAX_EPOCHS = 100_000
#: a batch of 2**20 images is already gigabytes for MNIST-sized inputs
MAX_BATCH_SIZE = 2**20
#: latency batches are timed many times: 65536 images per forward pass is plenty
MAX_LATENCY_BATCH_SIZE = 2**16
MAX_REPEATS = 10_000


class FieldError(ConfigError):
    """A field of one config dataclass has an invalid value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


def _is_number(value: Any) -> bool:
    # bool is an int subclass; `lr: true` is a typo, not 1.0
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive(field: str, value: Any) -> None:
    """``value`` must be a finite number > 0."""
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise FieldError(field, f"must be a finite number > 0, got {value!r}")


def non_negative(field: str, value: Any) -> None:
    """``value`` must be a finite number >= 0."""
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise FieldError(field, f"must be a finite number >= 0, got {value!r}")


def count(field: str, value: Any, minimum: int = 0, maximum: int | None = None) -> None:
    """``value`` must be an integer >= ``minimum`` (and <= ``maximum`` when given)."""
    too_large = maximum is not None and isinstance(value, int) and value > maximum
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or too_large:
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise FieldError(field, f"must be an integer {bound}, got {value!r}")


def in_range(field: str, value: Any, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
    """``value`` must lie in the interval ``low..high`` with the given open ends."""
    ok = _is_number(value) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise FieldError(field, f"must be in {interval}, got {value!r}")


def non_empty(field: str, value: str) -> None:
    """``value`` must be a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise FieldError(field, f"must be a non-empty string, got {value!r}")
