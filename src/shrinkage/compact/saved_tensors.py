"""Check a saved model's tensors against the model its layout rebuilds, before loading them.

Names and shapes are compared with the file's header alone (no tensor data read yet),
so a tensor the layout has no place for, a missing one or one of the wrong shape is
named before anything large is read. Data types are checked once the tensors are read:
a floating-point tensor is loaded in the file's precision (a float64 model comes back
float64 whatever the precision of the fresh base model), an integer one must match
exactly, and the layers the layout describes compute in one precision each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from shrinkage.compact.layout import codec_of
from shrinkage.compact.layout_schema import LayoutError


def expected_tensors(base: nn.Module, made: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """The state of ``base`` once the modules ``made`` replace theirs (by name), by tensor name."""
    prefixes = tuple(f"{name}." for name in made)
    out = {k: v for k, v in base.state_dict(keep_vars=True).items() if not k.startswith(prefixes)}
    for top, new in made.items():
        out.update({f"{top}.{k}": v for k, v in new.state_dict(keep_vars=True).items()})
    return out


def expected_modules(base: nn.Module, made: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """The modules of ``base`` once the modules ``made`` replace theirs, by name."""
    tops = tuple(made)
    prefixes = tuple(f"{name}." for name in made)
    out = {k: m for k, m in base.named_modules() if k not in tops and not k.startswith(prefixes)}
    for top, new in made.items():
        out.update({f"{top}.{k}" if k else top: m for k, m in new.named_modules()})
    return out


def _shape(shape: Iterable[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def check_header(expected: Mapping[str, Tensor], stored: Mapping[str, tuple[int, ...]],
                 aliases: Mapping[str, str], source: str) -> None:  # fmt: skip
    """Every expected tensor is stored (or an alias of a stored one) with its shape; nothing else is."""
    for name in stored:
        if name not in expected:
            raise LayoutError(f"{source}: tensor '{name}' has no place in the model the layout rebuilds")
    for name, target in aliases.items():
        if name in stored:
            raise LayoutError(f"{source}: tensor '{name}' is stored and also listed as an alias of '{target}'")
        if name not in expected:
            raise LayoutError(f"{source}: alias '{name}' names no tensor of the model the layout rebuilds")
        if target not in stored:
            raise LayoutError(f"{source}: tensor '{name}' is stored as '{target}', which the file lacks")
    for name, tensor in expected.items():
        shape = stored.get(name, stored.get(aliases.get(name, "")))
        if shape is None:
            raise LayoutError(f"{source}: tensor '{name}' is missing (the layout's model has one of shape "
                              f"{_shape(tensor.shape)})")  # fmt: skip
        if tuple(shape) != tuple(tensor.shape):
            raise LayoutError(f"{source}: tensor '{name}' has shape {_shape(shape)}, but the layout implies "
                              f"{_shape(tensor.shape)}")  # fmt: skip


def _owner(name: str) -> str:
    return name.rpartition(".")[0]


def check_dtypes(model_tensors: Mapping[str, Tensor], state: Mapping[str, Tensor], layers: Mapping[str, nn.Module],
                 source: str) -> None:  # fmt: skip
    """Floating point where the model has floating point, the same integer type elsewhere,
    and one precision per layer of a described type (``layers``: all modules by name)."""
    precision: dict[str, tuple[str, torch.dtype]] = {}
    for name, tensor in state.items():
        want = model_tensors[name]
        if want.is_floating_point() != tensor.is_floating_point() or (
            not want.is_floating_point() and want.dtype != tensor.dtype
        ):
            kind = "a floating-point type" if want.is_floating_point() else str(want.dtype).removeprefix("torch.")
            raise LayoutError(f"{source}: tensor '{name}' is {str(tensor.dtype).removeprefix('torch.')}, "
                              f"but the layout's model needs {kind}")  # fmt: skip
        owner = _owner(name)
        if not tensor.is_floating_point() or owner not in layers or codec_of(type(layers[owner])) is None:
            continue
        first = precision.setdefault(owner, (name, tensor.dtype))
        if first[1] != tensor.dtype:
            raise LayoutError(f"{source}: tensor '{name}' is {str(tensor.dtype).removeprefix('torch.')} but "
                              f"'{first[0]}' of the same layer is {str(first[1]).removeprefix('torch.')}")  # fmt: skip


def check_indices(state: Mapping[str, Tensor], bounds: Iterable[tuple[str, int]], source: str) -> None:
    """Every index buffer holds distinct positions within its range."""
    for name, positions in bounds:
        index = state[name]
        if index.numel() == 0:
            continue
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= positions:
            bad = low if low < 0 else high
            raise LayoutError(f"{source}: tensor '{name}' holds index {bad}, outside 0..{positions - 1}")
        if torch.unique(index).numel() != index.numel():
            raise LayoutError(f"{source}: tensor '{name}' holds a repeated index")


def adopt_dtypes(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Give each floating-point parameter and buffer of ``model`` the precision of its
    tensor in ``state``, in place (tied parameters stay one object)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        if name in params and params[name].dtype != tensor.dtype:
            params[name].data = params[name].data.to(tensor.dtype)
        elif name in buffers and buffers[name].dtype != tensor.dtype:
            owner = model.get_submodule(_owner(name))
            owner._buffers[name.rpartition(".")[2]] = buffers[name].to(tensor.dtype)
