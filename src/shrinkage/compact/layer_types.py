"""Layer types: what compaction must know about a module that owns sliced parameters.

One :class:`LayerType` per module type holds how its weight is laid out (which dim is
output channels, which input), how a smaller copy is built from keep-masks, and whether
it accepts keeping no channel at all. Users register their own module with
:func:`register_layer_type`; subclasses of a registered type are covered by it.

The plan speaks of a layer's parameters in their *canonical* orientation: dim 0 is the
output channels and dim 1 the input channels, as in ``nn.Linear`` and ``nn.Conv2d``. A
layer that stores its weight otherwise (GPT-2's ``Conv1D`` keeps ``(in, out)``) says so
through ``canonical``, and its ``shrink`` receives masks in that same orientation.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from shrinkage.compact.surgery import SURGEONS, ZERO_WIDTH, sliced_copy

Shrink = Callable[[nn.Module, dict[int, Tensor]], nn.Module]


@dataclass(frozen=True)
class LayerType:
    """How compaction treats modules of ``types`` (and their subclasses).

    ``shrink(module, keep)``: a smaller copy keeping ``keep[d]`` (bool masks) along
    canonical dim ``d`` (0: outputs, 1: inputs). ``canonical(module, attr)``: the
    parameter ``attr`` in canonical orientation (``None``: as stored). ``matmul_weight``:
    the graph applies the weight as ``x @ weight`` (an ``(in, out)`` matrix read by
    ``addmm``/``mm``/``matmul``) rather than through ``linear``/``convolution``.
    ``zero_width``: ``shrink`` may keep no channel along a dim (a removed branch).
    """

    types: tuple[type[nn.Module], ...]
    shrink: Shrink
    canonical: Callable[[nn.Module, str], Tensor] | None = None
    matmul_weight: bool = False
    zero_width: bool = False


_REGISTRY: dict[type[nn.Module], LayerType] = {}


def register_layer_type(layer_type: LayerType) -> LayerType:
    """Make compaction support ``layer_type.types`` (replacing an earlier registration)."""
    for cls in layer_type.types:
        _REGISTRY[cls] = layer_type
        SURGEONS[cls] = layer_type.shrink
        if layer_type.zero_width:
            ZERO_WIDTH.add(cls)
        else:
            ZERO_WIDTH.discard(cls)
    return layer_type


def layer_type_of(module: nn.Module) -> LayerType | None:
    _register_optional()
    return next((_REGISTRY[c] for c in type(module).__mro__ if c in _REGISTRY), None)


def canonical_param(module: nn.Module, attr: str) -> Tensor:
    """``module.<attr>`` with dim 0 the output channels and dim 1 the input channels."""
    lt = layer_type_of(module)
    if lt is not None and lt.canonical is not None:
        return lt.canonical(module, attr)
    return getattr(module, attr).detach()  # type: ignore[no-any-return]


def stored_dim(module: nn.Module, attr: str, dim: int) -> int:
    """The dim of ``module.<attr>`` as stored that canonical dim ``dim`` refers to."""
    lt = layer_type_of(module)
    if lt is not None and lt.matmul_weight and attr == "weight":
        return 1 - dim  # an (in, out) matrix
    return dim


# -- Hugging Face transformers' Conv1D (GPT-2 and relatives): a linear layer whose weight is (in, out)


def _matrix_canonical(module: nn.Module, attr: str) -> Tensor:
    t = getattr(module, attr).detach()
    return t.t() if attr == "weight" else t


def _matrix_shrink(module: nn.Module, keep: dict[int, Tensor]) -> nn.Module:
    weight, bias = module.weight.detach(), module.bias.detach()
    out_idx = keep[0].nonzero().flatten() if 0 in keep else None
    in_idx = keep[1].nonzero().flatten() if 1 in keep else None
    if in_idx is not None:
        weight = weight[in_idx]
    if out_idx is not None:
        weight, bias = weight[:, out_idx], bias[out_idx]
    return sliced_copy(module, {"weight": weight, "bias": bias}, nx=weight.shape[0], nf=weight.shape[1])


_OPTIONAL_DONE: set[str] = set()


def _register_optional() -> None:
    """Layer types of optional libraries, registered once the user's code has imported
    them (a model of theirs can only exist then), so importing shrinkage stays light."""
    if "transformers" not in _OPTIONAL_DONE and "transformers" in sys.modules:
        _OPTIONAL_DONE.add("transformers")
        try:
            from transformers.pytorch_utils import Conv1D
        except ImportError:
            return
        register_layer_type(LayerType((Conv1D,), _matrix_shrink, canonical=_matrix_canonical, matmul_weight=True))
