"""How a tensor is seen as groups.

A :class:`Grouping` presents one or more parameter slices as a matrix of shape
``(n_groups, group_size)``: row ``g`` holds every weight of group ``g``. Penalties only
ever see that matrix, so the same proximal operator serves filters, channels,
im2col columns, whole blocks and (later) coupled slices spanning several layers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor, nn


class Grouping(ABC):
    """A view of parameter slices as a ``(n_groups, group_size)`` matrix.

    ``gather`` is differentiable (the subgradient mode backpropagates through it);
    ``scatter_`` writes a modified matrix back into the parameters in place.
    """

    #: qualified name of the module (or block) the groups belong to, for messages and logs
    label: str

    @property
    @abstractmethod
    def parameters(self) -> tuple[nn.Parameter, ...]:
        """The parameters this grouping reads and writes."""

    @abstractmethod
    def gather(self) -> Tensor:
        """Return the ``(n_groups, group_size)`` matrix (differentiable)."""

    @abstractmethod
    def scatter_(self, matrix: Tensor) -> None:
        """Write ``matrix`` (same shape as :meth:`gather`) back into the parameters."""

    @property
    def shape(self) -> tuple[int, int]:
        with torch.no_grad():
            rows, cols = self.gather().shape
        return rows, cols

    @property
    def scales_rows_in_place(self) -> bool:
        """Whether :meth:`row_norms` and :meth:`scale_rows_` work on the parameters directly,
        without building the matrix. A penalty whose proximal map only multiplies each row by
        a function of its norm (the group Lasso) then skips the gather/scatter round trip."""
        return False

    @torch.no_grad()
    def row_norms(self) -> Tensor:
        """The L2 norm of each row of the matrix, shape ``(n_groups,)`` (not differentiable)."""
        norms: Tensor = self.gather().norm(dim=1)
        return norms

    @torch.no_grad()
    def scale_rows_(self, factors: Tensor) -> None:
        """Multiply row ``g`` of the matrix by ``factors[g]``, in the parameters."""
        matrix = self.gather()
        matrix.mul_(factors.unsqueeze(1).to(matrix.dtype))
        self.scatter_(matrix)


def _write(param: nn.Parameter, src: Tensor) -> None:
    """``param <- src`` where ``src`` may be a view of ``param`` itself (a gathered matrix
    edited in place): identical memory needs no copy, any other overlap needs a clone."""
    if src.data_ptr() == param.data_ptr() and src.stride() == param.stride() and src.shape == param.shape:
        return
    if src.untyped_storage().data_ptr() == param.untyped_storage().data_ptr():
        src = src.clone()
    with torch.no_grad():
        param.copy_(src)


class AxisGrouping(Grouping):
    """Groups are the slices of one tensor along ``dim``: ``W.select(dim, g)``.

    ``dim=0`` of a conv weight ``(N, C, kh, kw)`` gives filters (rows of the
    ``N x C*kh*kw`` matrix), ``dim=1`` gives input channels.
    """

    def __init__(self, label: str, param: nn.Parameter, dim: int) -> None:
        self.label = label
        self.param = param
        self.dim = dim

    @property
    def parameters(self) -> tuple[nn.Parameter, ...]:
        return (self.param,)

    def gather(self) -> Tensor:
        p = self.param
        return p.movedim(self.dim, 0).reshape(p.shape[self.dim], -1)

    def scatter_(self, matrix: Tensor) -> None:
        p = self.param
        dim = self.dim % p.dim()  # a negative dim would never equal an enumerate() index
        moved_shape = (p.shape[dim],) + tuple(s for i, s in enumerate(p.shape) if i != dim)
        _write(p, matrix.reshape(moved_shape).movedim(0, dim))


class ColumnGrouping(Grouping):
    """Groups are the columns of a conv weight lowered to ``N x (C*kh*kw)``.

    Column ``c*kh*kw + i*kw + j`` is the SSL "filter shape" group ``W[:, c, i, j]``:
    when it is zero the im2col GEMM loses one row of its K dimension.
    """

    def __init__(self, label: str, param: nn.Parameter) -> None:
        if param.dim() < 2:
            raise ValueError(f"{label}: column groups need a weight with >= 2 dims")
        self.label = label
        self.param = param

    @property
    def parameters(self) -> tuple[nn.Parameter, ...]:
        return (self.param,)

    def gather(self) -> Tensor:
        return self.param.reshape(self.param.shape[0], -1).t()  # (C*kh*kw, N)

    def scatter_(self, matrix: Tensor) -> None:
        _write(self.param, matrix.t().reshape(self.param.shape))


class FlatGrouping(Grouping):
    """One group holding every element of several tensors (SSL's depth-wise group)."""

    def __init__(self, label: str, params: tuple[nn.Parameter, ...]) -> None:
        if not params:
            raise ValueError(f"{label}: a depth group needs at least one parameter")
        self.label = label
        self._params = params

    @property
    def parameters(self) -> tuple[nn.Parameter, ...]:
        return self._params

    def gather(self) -> Tensor:
        return torch.cat([p.reshape(1, -1) for p in self._params], dim=1)

    def scatter_(self, matrix: Tensor) -> None:
        with torch.no_grad():
            offset = 0
            for p in self._params:
                n = p.numel()
                p.copy_(matrix[0, offset : offset + n].reshape(p.shape))
                offset += n


class SliceGrouping(Grouping):
    """Coupled groups: group ``g`` is the union of slices of several tensors.

    Each member is ``(param, dim, index)`` with ``index`` a ``(n_groups, k)`` long
    tensor: group ``g`` owns ``param.index_select(dim, index[g])``. This expresses a
    filter together with its bias and BatchNorm entries, the consumer's input
    channels (``k = H*W`` columns when a flatten feeds a Linear), concat offsets, or
    the rows of one attention head.
    """

    def __init__(self, label: str, members: tuple[tuple[nn.Parameter, int, Tensor], ...]) -> None:
        if not members:
            raise ValueError(f"{label}: a coupled grouping needs at least one member")
        n = {idx.shape[0] for _, _, idx in members}
        if len(n) != 1:
            raise ValueError(f"{label}: members disagree on the number of groups: {sorted(n)}")
        self.label = label
        # index tensors live where their parameter does (index_select refuses a mix)
        self.members = tuple((p, d, idx.to(p.device)) for p, d, idx in members)
        self.n_groups = n.pop()
        # per member: the positions to read from its per-position squared norms, or None for
        # its own rows 0..n-1 in order (a producer), read as they are
        self._positions = tuple(
            None if _is_identity(idx, p.shape[d % p.dim()]) else idx.reshape(-1) for p, d, idx in self.members
        )
        self._scaling = self._scaling_plan()

    @property
    def parameters(self) -> tuple[nn.Parameter, ...]:
        return tuple(p for p, _, _ in self.members)

    def gather(self) -> Tensor:
        parts = []
        for p, dim, idx in self.members:
            picked = p.index_select(dim, idx.reshape(-1)).movedim(dim, 0)  # (n*k, ...rest)
            parts.append(picked.reshape(self.n_groups, -1))
        return torch.cat(parts, dim=1)

    def scatter_(self, matrix: Tensor) -> None:
        with torch.no_grad():
            offset = 0
            for p, dim, idx in self.members:
                dim = dim % p.dim()  # a negative dim would never equal an enumerate() index
                flat = idx.reshape(-1)
                rest = tuple(s for i, s in enumerate(p.shape) if i != dim)
                width = (flat.numel() // self.n_groups) * _prod(rest)
                block = matrix[:, offset : offset + width].reshape((flat.numel(),) + rest)
                p.index_copy_(dim, flat, block.movedim(0, dim))
                offset += width

    @property
    def shape(self) -> tuple[int, int]:
        # from the members' shapes: the base class would build the whole matrix to read it
        width = 0
        for p, dim, idx in self.members:
            dim = dim % p.dim()
            width += idx.shape[1] * _prod(tuple(s for i, s in enumerate(p.shape) if i != dim))
        return self.n_groups, width

    @property
    def scales_rows_in_place(self) -> bool:
        return self._scaling is not None

    def _scaling_plan(self) -> tuple[_ParamScaling, ...] | None:
        """How each parameter is scaled in place; ``None`` when the slices of different groups
        overlap in one parameter (there ``scatter_`` lets the last member win, which a
        multiplication cannot reproduce): the gather/scatter path then stays the only one."""
        by_param: dict[int, list[tuple[nn.Parameter, int, Tensor]]] = {}
        for p, dim, idx in self.members:
            by_param.setdefault(id(p), []).append((p, dim % p.dim(), idx))
        plan = []
        for uses in by_param.values():
            p, dim = uses[0][0], uses[0][1]
            if any(d != dim for _, d, _ in uses):
                return None  # slices along two axes of one tensor overlap
            size = p.shape[dim]
            flat = torch.cat([idx.reshape(-1) for _, _, idx in uses])
            groups = torch.cat([_row_of(idx) for _, _, idx in uses])
            # position -> its group; positions of no group get n_groups, whose factor is 1
            owner = torch.full((size,), self.n_groups, dtype=torch.long, device=flat.device)
            owner[flat] = groups
            if not bool((owner[flat] == groups).all()):
                return None  # one position in two groups
            whole = size == self.n_groups and bool((owner == torch.arange(size, device=owner.device)).all())
            plan.append(_ParamScaling(p, dim, None if whole else owner))
        return tuple(plan)

    @torch.no_grad()
    def row_norms(self) -> Tensor:
        """Group norms from each slice's squared norm, summed per group: the same sums as the
        gathered matrix's rows (a slice listed twice counts twice there too), in another order."""
        dtype = self.members[0][0].dtype
        for p, _, _ in self.members[1:]:
            dtype = torch.promote_types(dtype, p.dtype)  # what torch.cat in gather() gives
        squares: dict[tuple[int, int], Tensor] = {}  # per (parameter, dim): squared norm of each position
        total: Tensor | None = None
        for (p, dim, idx), positions in zip(self.members, self._positions, strict=True):
            dim = dim % p.dim()
            sq = squares.get((id(p), dim))
            if sq is None:
                sq = p.to(dtype).square()
                if p.dim() > 1:
                    sq = sq.sum(dim=[i for i in range(p.dim()) if i != dim])
                squares[id(p), dim] = sq
            part = sq if positions is None else sq.index_select(0, positions)
            if idx.shape[1] > 1:
                part = part.view(self.n_groups, -1).sum(dim=1)
            total = part if total is None else total + part
        assert total is not None  # members is never empty
        return total.sqrt()

    @torch.no_grad()
    def scale_rows_(self, factors: Tensor) -> None:
        """Multiply every parameter in place by its groups' factors along the grouped axis
        (1 at positions of no group): each weight of group ``g`` gets ``w * factors[g]``,
        the very product the gather/scatter path writes back."""
        if self._scaling is None:
            super().scale_rows_(factors)
            return
        padded: Tensor | None = None
        for s in self._scaling:
            if s.owner is None:
                per_position = factors
            else:
                if padded is None:
                    padded = torch.cat([factors, factors.new_ones(1)])
                per_position = padded[s.owner]
            shape = [1] * s.param.dim()
            shape[s.dim] = -1
            s.param.mul_(per_position.to(s.param.dtype).view(shape))


class _ParamScaling(NamedTuple):
    """One parameter of a :class:`SliceGrouping` and the group of each position along ``dim``
    (``owner``; ``n_groups`` for none; ``None`` when position ``g`` is group ``g``, all covered)."""

    param: nn.Parameter
    dim: int
    owner: Tensor | None


def _row_of(idx: Tensor) -> Tensor:
    """The group of each entry of ``idx.reshape(-1)`` for an ``(n_groups, k)`` index."""
    n, k = idx.shape
    return torch.arange(n, device=idx.device).repeat_interleave(k)


def _is_identity(idx: Tensor, size: int) -> bool:
    """Whether ``idx.reshape(-1)`` is ``0, 1, ..., size - 1`` (a producer's own rows)."""
    return idx.numel() == size and bool((idx.reshape(-1) == torch.arange(size, device=idx.device)).all())


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out
