"""How a tensor is seen as groups.

A :class:`Grouping` presents one or more parameter slices as a matrix of shape
``(n_groups, group_size)``: row ``g`` holds every weight of group ``g``. Penalties only
ever see that matrix, so the same proximal operator serves filters, channels,
im2col columns, whole blocks and (later) coupled slices spanning several layers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

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


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out
