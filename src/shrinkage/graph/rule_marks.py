"""Marks on channel rules: what compaction may assume about the op a rule stands for.

A rule is a plain function; the marks are attributes set on it once, where the rules are
registered, and read back with ``getattr(rule, name, default)`` where compaction decides
(an unmarked rule assumes nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypedDict, Unpack

from torch import fx, nn

#: whether an op pads its input (``(node, its module or None) -> bool``): a non-zero
#: constant channel then becomes a border pattern, which no bias can say
Pads = Callable[[fx.Node, nn.Module | None], bool]


class RuleMarks(TypedDict, total=False):
    #: the op follows a channel axis split over two dims (a channel shuffle's reshapes)
    handles_grid: bool
    #: the op computes correctly on a tensor with no channels (a removed branch)
    zero_width: bool
    #: a channel that is exactly zero in every input stays zero in the output
    keeps_zero: bool
    #: an add: two zero operands give zero
    adds_zero: bool
    #: a product: one zero factor gives zero
    product: bool
    #: a depthwise conv with a zero bias maps a zero channel to zero
    zero_bias_keeps_zero: bool
    pads: Pads


def mark(rules: Iterable[object], **marks: Unpack[RuleMarks]) -> None:
    """Set ``marks`` on each rule in ``rules``."""
    for rule in rules:
        for name, value in marks.items():
            setattr(rule, name, value)
