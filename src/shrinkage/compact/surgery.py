"""Layer surgery: build a smaller copy of a layer from keep-masks, one function per type.

Each function is the ``shrink`` of a layer type (:mod:`shrinkage.compact.layer_types`);
``tests/compact/test_surgery.py`` runs one conformance test over every registered type,
so a new entry cannot forget a field.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from typing import TypeVar, cast

import torch
from torch import Tensor, nn

from shrinkage.compact.module_attrs import ConvLike, int_attr, optional_tensor_attr, tensor_attr
from shrinkage.errors import UnsupportedModuleError
from shrinkage.layers import ZeroWidthConv


def shrink(name: str, module: nn.Module, keep: dict[int, Tensor]) -> nn.Module:
    """Smaller copy of ``module`` keeping ``keep[dim]`` along each masked dim."""
    from shrinkage.compact.layer_types import layer_type_of  # the registry imports this module

    layer_type = layer_type_of(module)
    if layer_type is not None:
        new = layer_type.shrink(module, keep)
        new.train(module.training)  # a fresh module starts in training mode; keep the original's
        return new
    raise UnsupportedModuleError(
        f"cannot shrink module '{name}' ({type(module).__name__}): no layer type is registered for it "
        "(see shrinkage.register_layer_type)"
    )


def _idx(keep: dict[int, Tensor], dim: int, size: int) -> Tensor:
    mask = keep.get(dim)
    return torch.arange(size) if mask is None else mask.nonzero().flatten()


def _select(t: Tensor, dim: int, idx: Tensor, size: int) -> Tensor:
    """``t.index_select(dim, idx)``, without the copy when every index is kept."""
    return t if len(idx) == size else t.index_select(dim, idx)


def _kept(w: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``w`` keeping ``rows`` along dim 0 and ``cols`` along dim 1, as a new tensor (even when
    everything is kept). ``index_select`` copies whole contiguous slices; advanced indexing
    (``w[rows][:, cols]``) gathers element by element, about 10x slower on a 1x1 conv weight."""
    return w.index_select(0, rows).index_select(1, cols)


M = TypeVar("M", bound=nn.Module)


def _built(cls: type[M], tensors: dict[str, Tensor | None], *args: object, **kwargs: object) -> M:
    """``cls(*args, **kwargs)`` whose parameters and buffers are ``tensors`` (new tensors no
    other module holds; None for an absent bias). Built on the meta device, so nothing is
    allocated or initialized only to be overwritten: about half the cost of building a
    layer this size and copying the weights in, which compaction does for every layer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors is a no-op")
        new = cls(*args, device="meta", **kwargs)
    for name, value in tensors.items():
        old = new._parameters[name] if name in new._parameters else new._buffers[name]
        if value is None:
            assert old is None, name  # built without it
            continue
        assert old is not None and old.shape == value.shape, name  # the layer was built for this shape
        if name in new._parameters:
            new._parameters[name] = nn.Parameter(value.to(old.dtype), requires_grad=old.requires_grad)
        else:
            new._buffers[name] = value.to(old.dtype)
    left = [n for n, t in (*new.named_parameters(), *new.named_buffers()) if t.is_meta]
    assert not left, f"{cls.__name__}: {left} not given"  # every tensor of the layer comes from the original
    return new


_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, ZeroWidthConv)
_PLAIN_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def shrink_conv(module: nn.Module, keep: dict[int, Tensor]) -> nn.Module:
    m = cast(ConvLike, module)  # the shrink of the conv layer type: module is one of its types
    out_idx = _idx(keep, 0, m.out_channels)
    if m.groups == 1:
        in_idx = _idx(keep, 1, m.in_channels)
        groups = 1
        weight = _kept(m.weight.detach(), out_idx, in_idx)
        in_ch = len(in_idx)
    elif m.groups == m.in_channels == m.out_channels:  # depthwise: channel c in -> c out
        groups = in_ch = len(out_idx)
        weight = m.weight.detach().index_select(0, out_idx)
    else:
        raise UnsupportedModuleError(f"cannot shrink grouped conv with groups={m.groups}")
    bias = m.bias.detach()[out_idx] if m.bias is not None else None
    if in_ch == 0 or len(out_idx) == 0:
        zero_width = ZeroWidthConv(
            in_ch, len(out_idx), m.kernel_size, m.stride, m.padding, m.dilation, bias=m.bias is not None,
            padding_mode=m.padding_mode,
        ).to(device=m.weight.device, dtype=m.weight.dtype)  # fmt: skip
        with torch.no_grad():
            zero_width.weight.copy_(weight)  # broadcast: a depthwise weight (0, 1, k, k) into (0, 0, k, k)
            if bias is not None:
                tensor_attr(zero_width, "bias").copy_(bias)
        return zero_width
    if type(module) not in _PLAIN_CONVS:
        # a subclass (timm's Conv2dSame, a weight-standardized conv) may take other
        # constructor arguments and compute more: a sliced copy keeps all of it
        tensors = {"weight": weight} | ({"bias": bias} if bias is not None else {})
        return sliced_copy(module, tensors, in_channels=in_ch, out_channels=len(out_idx), groups=groups)
    return _built(
        type(module), {"weight": weight, "bias": bias}, in_ch, len(out_idx), m.kernel_size, stride=m.stride,
        padding=m.padding, dilation=m.dilation, groups=groups, bias=bias is not None, padding_mode=m.padding_mode,
        dtype=m.weight.dtype,
    )  # fmt: skip


def shrink_linear(module: nn.Module, keep: dict[int, Tensor]) -> nn.Module:
    m = cast(nn.Linear, module)  # the shrink of the linear layer type: nn.Linear and its subclasses
    out_idx = _idx(keep, 0, m.out_features)
    in_idx = _idx(keep, 1, m.in_features)
    if type(m) is not nn.Linear and len(in_idx) and len(out_idx):  # a subclass keeps its type and extras
        weight = _select(_select(m.weight.detach(), 0, out_idx, m.out_features), 1, in_idx, m.in_features)
        tensors = {"weight": weight} | ({"bias": m.bias.detach()[out_idx]} if m.bias is not None else {})
        return sliced_copy(m, tensors, in_features=len(in_idx), out_features=len(out_idx))
    bias = m.bias.detach()[out_idx] if m.bias is not None else None
    weight = _kept(m.weight.detach(), out_idx, in_idx)
    return _built(nn.Linear, {"weight": weight, "bias": bias}, len(in_idx), len(out_idx), bias=bias is not None,
                  dtype=m.weight.dtype)  # fmt: skip


def shrink_batchnorm(m: nn.Module, keep: dict[int, Tensor]) -> nn.Module:
    idx = _idx(keep, 0, int_attr(m, "num_features"))
    if len(idx) == 0:
        return nn.Identity()  # normalizing no channels is the identity on an empty tensor
    tensors = {name: t.detach().index_select(0, idx) for name, t in _per_channel(m)}
    dtypes = {t.dtype for t in tensors.values()}
    if type(m) in _PLAIN_NORMS and len(dtypes) == 1:  # a new instance: the cheap way for the common case
        bn = cast(nn.modules.batchnorm._BatchNorm, m)
        if bn.num_batches_tracked is not None:
            tensors["num_batches_tracked"] = bn.num_batches_tracked.detach().clone()
        return _built(type(m), dict(tensors), len(idx), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                      track_running_stats=bn.track_running_stats, dtype=dtypes.pop())  # fmt: skip
    # a sliced copy, not a new instance: a subclass (timm's BatchNormAct2d, which also
    # applies an activation) keeps its type, its other attributes and children, and the
    # original's device and dtype (a float64 model stays float64)
    return sliced_copy(m, tensors, num_features=len(idx))


def _per_channel(m: nn.Module) -> list[tuple[str, Tensor]]:
    names = (["weight", "bias"] if m.affine else []) + (
        ["running_mean", "running_var"] if m.track_running_stats else []
    )
    return [(n, tensor_attr(m, n)) for n in names]


def sliced_copy(m: nn.Module, tensors: dict[str, Tensor], **attrs: object) -> nn.Module:
    """Copy of ``m`` whose named parameters/buffers are replaced by ``tensors`` (already
    sliced) and whose ``attrs`` are set; every other tensor and child is copied too, the
    replaced ones are not copied first."""
    memo: dict[int, object] = {id(getattr(m, n)): None for n in tensors}
    new = copy.deepcopy(m, memo)
    for name, value in tensors.items():
        if name in m._parameters:
            old = m._parameters[name]
            assert old is not None  # a parameter that is replaced is set
            new._parameters[name] = nn.Parameter(value.clone(), requires_grad=old.requires_grad)
        else:
            new._buffers[name] = value.clone()
    for key, attr in attrs.items():
        setattr(new, key, attr)
    return new


def shrink_prelu(module: nn.Module, keep: dict[int, Tensor]) -> nn.Module:
    m = cast(nn.PReLU, module)  # the shrink of the PReLU layer type
    idx = _idx(keep, 0, m.num_parameters)
    return _built(nn.PReLU, {"weight": m.weight.detach()[idx]}, len(idx), dtype=m.weight.dtype)


def add_bias(module: nn.Module, delta: Tensor) -> None:
    """``bias += delta``, creating the bias if the layer had none (folded constants)."""
    bias = optional_tensor_attr(module, "bias")
    if bias is None:
        module.bias = nn.Parameter(delta.clone().to(tensor_attr(module, "weight").dtype))
    else:
        with torch.no_grad():
            bias.add_(delta.to(bias.dtype))


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def slice_free_tensors(model: nn.Module, free: Mapping[tuple[str, str], tuple[int, Tensor]]) -> None:
    """Slice, in place, each free tensor of ``model`` (a layer scale, a position embedding, a
    class token: a parameter or buffer of a module without layer type, see
    ``CompactionPlan.free_tensors``) to its kept positions along its dim. A parameter stays
    a parameter (with its ``requires_grad``), a buffer a buffer (with its persistence)."""
    for (module_name, attr), (dim, keep) in free.items():
        module = model.get_submodule(module_name)
        if bool(keep.all()):
            continue
        if attr in module._parameters:
            old = module._parameters[attr]
            assert old is not None  # the graph read it
            idx = keep.nonzero().flatten().to(old.device)
            module._parameters[attr] = nn.Parameter(old.detach().index_select(dim, idx), old.requires_grad)
        else:
            buffer = module._buffers[attr]
            assert buffer is not None  # the graph read it
            module._buffers[attr] = buffer.index_select(dim, keep.nonzero().flatten().to(buffer.device))
