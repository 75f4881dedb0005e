"""Non-structured sparse layers: element-wise zeros skipped by PyTorch's sparse kernels.

These are the baseline SSL compares structured removal against: a weight with the same
fraction of zeros, but scattered, so no smaller dense layer expresses it and only a
sparse x dense product can skip the zeros. Both layers are inference layers: the weight
is a sparse buffer (no gradient flows to it), the input may still require grad.

**Which sparse format.** Measured on CPU (MKL build, one thread, 70% to 97% zeros),
CSR is the faster format when the dense operand is narrow and COO when it is wide:

* ``500 x 800`` weight times ``800 x 16`` (a Linear at batch 16): CSR 0.07 ms at 90%
  zeros against 1.1 ms for COO; CSR wins by 10-30x up to a few hundred columns.
* ``50 x 500`` weight times ``500 x 4096`` (LeNet's conv2 on an im2col batch of 64):
  COO 0.82 ms against 1.15 ms for CSR at 90% zeros; ``64 x 576`` times ``576 x 8192``
  (a ResNet-20 conv at batch 128): COO 4.4 ms against 11.5 ms.

CSR's kernel walks the rows of the sparse matrix and pays a fixed cost per row and per
output column block, which a narrow operand amortizes well; COO's kernel adds
``value * dense_row`` for each non-zero, a long contiguous axpy when the dense rows are
wide. So :class:`SparseLinear` defaults to CSR and :class:`SparseConv2d` (whose im2col
operand has ``batch * output positions`` columns) to COO; ``layout`` overrides either.

**Exported** (``torch.export`` and the ONNX exporters), neither format can go: ONNX has
no sparse tensors or sparse x dense product, and ``torch.export`` cannot trace PyTorch's
sparse kernels with a dynamic batch. There the layers scatter their non-zeros (kept
beside the sparse weight as plain tensors: their flat positions and values) into a dense
weight and run the dense layer: same outputs, dense speed.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shrinkage.errors import ConfigError, UnsupportedModuleError

#: the sparse layouts with CPU kernels for ``torch.sparse.mm(sparse, dense)``
SPARSE_LAYOUTS = (torch.sparse_csr, torch.sparse_coo)

_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _to_sparse(matrix: Tensor, layout: torch.layout, owner: str) -> Tensor:
    if layout not in SPARSE_LAYOUTS:
        raise ConfigError(f"{owner}: layout must be torch.sparse_csr or torch.sparse_coo, got {layout!r}")
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta state": said once per conversion otherwise
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        dense = matrix.detach().clone().contiguous()
        return dense.to_sparse_csr() if layout == torch.sparse_csr else dense.to_sparse().coalesce()


def _exporting() -> bool:
    """Whether a graph is being exported (``torch.export``, either ONNX exporter), where the
    sparse weight cannot go. ``torch.compiler.is_exporting`` exists from torch 2.6 on."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return torch.onnx.is_in_onnx_export() or (is_exporting is not None and is_exporting())


def _nnz(weight: Tensor) -> int:
    return int(weight.values().numel())


class _SparseWeight(nn.Module):
    """Loads a state dict whose sparse ``weight`` has a different number of non-zeros.

    ``load_state_dict`` copies into the existing buffer, and ``copy_`` between sparse
    tensors requires equal ``nnz``; a saved layer rarely matches the one it is loaded
    into (built from a fresh dense layer), so a same-shape, same-layout weight replaces
    the buffer first and the copy then runs between equal patterns.
    """

    weight: Tensor
    _positions: Tensor  # flat positions (row * columns + column) of the non-zeros
    _values: Tensor  # their values, in the same order

    def _register_sparse_weight(self, matrix: Tensor, layout: torch.layout, owner: str) -> None:
        self.register_buffer("weight", _to_sparse(matrix, layout, owner))
        # derived from ``weight`` (so not saved), for exported graphs, which cannot hold it
        self.register_buffer("_positions", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("_values", torch.zeros(0), persistent=False)
        self._derive_nonzeros()

    def _derive_nonzeros(self) -> None:
        coo = self.weight.detach().to_sparse_coo().coalesce()
        rows, cols = coo.indices()
        self._positions = rows * self.weight.shape[1] + cols
        self._values = coo.values().clone()

    def _scattered_weight(self) -> Tensor:
        """The ``(rows, columns)`` weight as a dense tensor built from ``_positions`` and
        ``_values`` only: what an exported graph computes with."""
        rows, cols = self.weight.shape
        dense = self._values.new_zeros(rows * cols).index_put((self._positions,), self._values)
        return dense.view(rows, cols)

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        if name == "weight" and "_values" in self._buffers:  # a new weight: new non-zeros
            self._derive_nonzeros()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # type: ignore[no-untyped-def]  # fmt: skip
        saved = state_dict.get(prefix + "weight")
        if isinstance(saved, Tensor) and saved.layout == self.weight.layout and saved.shape == self.weight.shape:
            self.weight = saved.detach().clone().to(self.weight.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)  # fmt: skip
        self._derive_nonzeros()  # the copy may have changed the values in place


class SparseLinear(_SparseWeight):
    """``y = x W^T + b`` with ``W`` stored sparse (CSR by default, see the module docstring).

    Built from a dense ``nn.Linear`` whose weight has element-wise zeros; outputs equal the
    dense layer's up to float round-off. ``name`` only labels error messages.
    """

    def __init__(self, linear: nn.Linear, layout: torch.layout = torch.sparse_csr, name: str = "") -> None:
        super().__init__()
        label = f"module '{name}'" if name else "SparseLinear"
        if not isinstance(linear, nn.Linear):
            raise UnsupportedModuleError(f"{label}: SparseLinear needs an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._register_sparse_weight(linear.weight, layout, label)
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    @property
    def nnz(self) -> int:
        """Number of stored (non-zero) weights."""
        return _nnz(self.weight)

    def dense_weight(self) -> Tensor:
        """The weight as a dense ``(out_features, in_features)`` tensor."""
        return self.weight.to_dense()

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        if _exporting():
            return F.linear(flat, self._scattered_weight(), self.bias).reshape(*lead, self.out_features)
        # sparse @ dense only takes the sparse operand first: compute (W x^T)^T; the
        # transposed view needs no copy (measured as fast as a contiguous one)
        out = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        total = self.in_features * self.out_features
        return f"{self.in_features}->{self.out_features}, nnz={self.nnz}/{total}, layout={self.weight.layout}"


class SparseConv2d(_SparseWeight):
    """A 2-D convolution as im2col (``F.unfold``) + sparse x dense GEMM.

    ``weight`` is the lowered ``out x (C*kh*kw)`` matrix stored sparse (COO by default,
    see the module docstring); stride, padding (numbers, ``"same"``, ``"valid"``, any
    padding mode) and dilation are those of the dense conv. Grouped convolutions are
    rejected: their lowered weight is block-diagonal across groups, not one matrix.
    """

    def __init__(self, conv: nn.Conv2d, layout: torch.layout = torch.sparse_coo, name: str = "") -> None:
        super().__init__()
        label = f"module '{name}'" if name else "SparseConv2d"
        if not isinstance(conv, nn.Conv2d):
            raise UnsupportedModuleError(f"{label}: SparseConv2d needs an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise UnsupportedModuleError(f"{label}: SparseConv2d needs groups=1, got groups={conv.groups}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size: tuple[int, int] = tuple(conv.kernel_size)  # type: ignore[assignment]
        self.stride: tuple[int, int] = tuple(conv.stride)  # type: ignore[assignment]
        self.dilation: tuple[int, int] = tuple(conv.dilation)  # type: ignore[assignment]
        #: F.pad order (left, right, top, bottom); "same" may pad one side more than the other
        self.pad: tuple[int, int, int, int] = _explicit_padding(conv)
        self.pad_mode = _PAD_MODES[conv.padding_mode]
        self._register_sparse_weight(conv.weight.reshape(conv.out_channels, -1), layout, label)
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None

    @property
    def nnz(self) -> int:
        return _nnz(self.weight)

    def dense_weight(self) -> Tensor:
        """The weight as a dense ``(out, C, kh, kw)`` tensor, as the conv it came from holds it."""
        return self.weight.to_dense().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, mode=self.pad_mode)
        if _exporting():
            weight = self._scattered_weight().view(self.out_channels, self.in_channels, *self.kernel_size)
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation)
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, 0, self.stride)  # (N, C*kh*kw, L)
        k, positions = cols.shape[1], cols.shape[2]
        # one GEMM over the whole batch: (out, K) @ (K, N*L); the transpose copies once
        rhs = cols.transpose(0, 1).reshape(k, n * positions)
        out = torch.sparse.mm(self.weight, rhs).reshape(self.out_channels, n, positions).transpose(0, 1)
        if self.bias is not None:
            out = out + self.bias.unsqueeze(1)
        return out.reshape(n, self.out_channels, oh, ow)

    def extra_repr(self) -> str:
        total = self.out_channels * self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return (
            f"{self.in_channels}->{self.out_channels}, kernel={self.kernel_size}, stride={self.stride}, "
            f"nnz={self.nnz}/{total}, layout={self.weight.layout}"
        )


def _explicit_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` of ``conv``, with ``"same"`` split as PyTorch splits it
    (the extra pixel of an odd total goes right/bottom)."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        pads: list[int] = []
        for d, k in zip(reversed(conv.dilation), reversed(conv.kernel_size), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    ph, pw = conv.padding  # type: ignore[misc]
    return (pw, pw, ph, ph)
