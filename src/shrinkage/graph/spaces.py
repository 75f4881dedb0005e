"""Channel spaces: the unit of structured removal.

A *space* is a set of channels that must shrink together: the output channels of one
or more producers (a conv's filters, a linear's neurons; several producers when their
outputs are added), the per-channel parameters that pass them on (BatchNorm entries),
and the input slices of every consumer that reads them. Removing channel ``c`` of a
space removes its slice everywhere at once.

A tensor's channel axis is described as a concatenation of :class:`Segment` s, each
mapping channels ``start..stop`` of a space to ``repeat`` consecutive positions (a
flatten of ``C x H x W`` into a Linear gives ``repeat = H*W``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Segment:
    space: int
    start: int
    stop: int
    repeat: int = 1

    @property
    def width(self) -> int:
        return (self.stop - self.start) * self.repeat


@dataclass(frozen=True)
class Grid:
    """A channel axis split over two dims (a channel shuffle's ``view(N, g, C/g, ...)``).

    The axis then spans dims ``dim`` and ``dim + 1`` with these ``sizes``; element
    ``[i, j]`` is position ``i * strides[0] + j * strides[1]`` of the unsplit axis. A
    transpose of the two dims swaps both pairs; a view merging them back yields the
    permuted axis.
    """

    sizes: tuple[int, int]
    strides: tuple[int, int]

    def merged_order(self) -> list[int]:
        """Unsplit position of each position of the axis after merging the two dims back."""
        (a, b), (sa, sb) = self.sizes, self.strides
        return [i * sa + j * sb for i in range(a) for j in range(b)]


@dataclass(frozen=True)
class Axis:
    """The channel axis of one tensor value: which dim it is and what it is made of."""

    dim: int
    segments: tuple[Segment, ...]
    grid: Grid | None = None

    @property
    def size(self) -> int:
        return sum(s.width for s in self.segments)


@dataclass(frozen=True)
class Slice:
    """Dimension ``dim`` of parameter/buffer ``attr`` of module ``module``."""

    module: str
    attr: str
    dim: int


@dataclass(frozen=True)
class Use:
    """A module parameter indexed by the channels of a tensor axis.

    For a consumer (a conv's or linear's input) ``slice`` is the weight's input dim and
    ``axis`` the input tensor's channel axis; for a pass-through op (BatchNorm) the
    slice is a per-channel parameter or buffer. ``zero_kills`` marks a per-channel scale
    (BatchNorm's weight) whose zero entry makes the channel a constant.
    """

    module: str
    node: str
    slice: Slice
    axis: Axis
    zero_kills: bool = False


@dataclass
class Space:
    """One set of channels removed together (after merging, see :class:`SpaceTable`)."""

    size: int
    producers: list[Slice] = field(default_factory=list)
    passthrough: list[Use] = field(default_factory=list)
    consumers: list[Use] = field(default_factory=list)
    #: why the space may not shrink (reaches the model output, feeds an op without rule, ...)
    pinned: list[str] = field(default_factory=list)
    #: True when the channels come from a graph input: they cannot be computed less of
    is_input: bool = False
    #: names of the fx nodes whose output channels belong to this space (for messages)
    nodes: list[str] = field(default_factory=list)
    #: the attention module whose heads these channels belong to: they go by whole heads
    #: (see :mod:`shrinkage.graph.attention_heads`), never one by one
    heads: str | None = None


class SpaceTable:
    """Spaces with union-find merging (a residual add ties two spaces into one)."""

    def __init__(self) -> None:
        self._spaces: list[Space] = []
        self._parent: list[int] = []

    def new(self, size: int, node: str) -> int:
        self._spaces.append(Space(size=size, nodes=[node]))
        self._parent.append(len(self._parent))
        return len(self._parent) - 1

    def find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]
            i = self._parent[i]
        return i

    def get(self, i: int) -> Space:
        return self._spaces[self.find(i)]

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        sa, sb = self._spaces[ra], self._spaces[rb]
        if sa.size != sb.size:
            raise ValueError(f"cannot merge channel spaces of sizes {sa.size} and {sb.size}")
        for name in ("producers", "passthrough", "consumers", "pinned", "nodes"):
            # a use that read both spaces is listed once in the merged one
            setattr(sa, name, list(dict.fromkeys(getattr(sa, name) + getattr(sb, name))))
        sa.is_input = sa.is_input or sb.is_input
        sa.heads = sa.heads or sb.heads
        self._parent[rb] = ra
        return ra

    def roots(self) -> list[int]:
        return [i for i in range(len(self._parent)) if self.find(i) == i]
