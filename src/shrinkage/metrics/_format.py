"""Number formatting for the markdown report; every helper renders missing values as "–"."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MISSING = "–"


def is_number(value: Any) -> bool:
    """True for ints/floats (not bools), the only values the formatters render."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def count(value: Any) -> str:
    """``431080`` -> ``431,080``."""
    return f"{int(value):,}" if is_number(value) else MISSING


def macs(value: Any) -> str:
    """``2290000`` -> ``2.29 M`` (MAC counts span many orders of magnitude)."""
    if not is_number(value):
        return MISSING
    for divisor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= divisor:
            return f"{value / divisor:.2f} {suffix}"
    return f"{int(value)}"


def ratio(value: Any) -> str:
    """``4.1`` -> ``4.10×``."""
    return f"{value:.2f}×" if is_number(value) else MISSING


def percent(value: Any) -> str:
    """``0.9912`` -> ``99.12%``."""
    return f"{100 * value:.2f}%" if is_number(value) else MISSING


def number(value: Any, digits: int = 4) -> str:
    """Plain float with ``digits`` significant digits."""
    return f"{value:.{digits}g}" if is_number(value) else MISSING


def millis(value: Any) -> str:
    """Milliseconds with three decimals."""
    return f"{value:.3f}" if is_number(value) else MISSING


def points(before: Any, after: Any) -> str:
    """Accuracy change in percentage points, ``-0.12 pt``."""
    if not (is_number(before) and is_number(after)):
        return MISSING
    return f"{100 * (after - before):+.2f} pt"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
