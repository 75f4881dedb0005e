"""Layer surgery: build a smaller copy of a layer from keep-masks, one function per type.

Each function is the ``shrink`` of a layer type (:mod:`shrinkage.compact.layer_types`);
``tests/compact/test_surgery.py`` runs one conformance test over every registered type,
so a new entry cannot forget a field.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TypeVar, cast

import torch
from torch import Tensor, nn

from shrinkage.compact.forms import FORM_CHOICE
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

#: what ``nn.Module.__init__`` sets on every module (parameter, buffer, child and hook
#: dicts): a built layer gets fresh ones; every other attribute is the layer's own
_MODULE_BASE = frozenset(nn.Module().__dict__)


def _built(module: M, tensors: dict[str, Tensor | None], **changed: object) -> M:
    """A new layer of ``module``'s type with ``module``'s attributes, ``changed`` set, and
    ``tensors`` (new tensors no other module holds; None for an absent bias) as its
    parameters and buffers: every one of ``module``'s, each keeping its ``requires_grad``.

    For the exact torch types only (a plain conv, linear, norm), whose constructor does
    nothing but store its arguments and initialize tensors this replaces: it is not run.
    Building on the meta device still ran the initializers; skipping the constructor
    halves the cost of shrinking a layer, which planning a compaction does for most layers.
    No hooks are carried, nor the record of an earlier form choice."""
    owned = {**module._parameters, **module._buffers}
    # every tensor comes from the original; one registered as None (no bias, no running stats) may be left out
    missing = [n for n, t in owned.items() if t is not None and n not in tensors]
    assert not missing and set(tensors) <= set(owned), f"{type(module).__name__}: {missing or sorted(tensors)}"
    tensors = {n: tensors.get(n) for n in owned}
    cls = type(module)
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    for key, value in module.__dict__.items():
        if key not in _MODULE_BASE and key != FORM_CHOICE:
            new.__dict__[key] = value
    new.__dict__.update(changed)
    new.training = module.training
    new._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    for name, value in tensors.items():
        if name in module._parameters:
            old = module._parameters[name]
            assert (old is None) == (value is None), name  # built with it exactly when the original has it
            new._parameters[name] = None if value is None or old is None else nn.Parameter(value, old.requires_grad)
        else:
            new._buffers[name] = value
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
    return _built(module, {"weight": weight, "bias": bias}, in_channels=in_ch, out_channels=len(out_idx), groups=groups)


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
    if type(m) is not nn.Linear:  # a subclass with nothing left: a plain Linear of nothing (its extras may not cope)
        m = nn.Linear(m.in_features, m.out_features, bias=bias is not None, device="meta", dtype=m.weight.dtype)
    return _built(m, {"weight": weight, "bias": bias}, in_features=len(in_idx), out_features=len(out_idx))


def shrink_batchnorm(m: nn.Module, keep: dict[int, Tensor]) -> nn.Module:
    idx = _idx(keep, 0, int_attr(m, "num_features"))
    if len(idx) == 0:
        return nn.Identity()  # normalizing no channels is the identity on an empty tensor
    tensors = {name: t.detach().index_select(0, idx) for name, t in _per_channel(m)}
    if type(m) in _PLAIN_NORMS:  # a new instance: the cheap way for the common case
        bn = cast(nn.modules.batchnorm._BatchNorm, m)
        counted = bn.num_batches_tracked
        extra = {"num_batches_tracked": counted.detach().clone()} if counted is not None else {}
        return _built(m, {**tensors, **extra}, num_features=len(idx))
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
    return _built(m, {"weight": m.weight.detach().index_select(0, idx)}, num_parameters=len(idx))


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
