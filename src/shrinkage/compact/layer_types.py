"""Layer types: everything compaction knows about a module type that owns sliced parameters.

One :class:`LayerType` per module family, registered once with
:func:`register_layer_type`, holds

* how the graph applies its weight (:class:`WeightUse`): which ATen op reads it under
  ``torch.export``, which weight dims are output and input channels, and how a constant
  input channel is folded into its bias;
* its module-level channel rule for the ``torch.fx`` capture (``fx_rule``), where the
  module is one node;
* its surgery (``shrink``: a smaller copy from keep-masks) and whether it may keep no
  channel at all (``zero_width``: a removed branch);
* its save/load description (``codecs``, see :mod:`shrinkage.compact.layout`).

Subclasses of a registered type are covered by it (timm's ``BatchNormAct2d`` is a
``BatchNorm2d``). The plan speaks of a layer's parameters in *canonical* orientation
(dim 0: outputs, dim 1: inputs, as ``nn.Linear`` and ``nn.Conv2d`` store them); a
``MATMUL`` layer stores its weight ``(in, out)`` and is transposed on the way.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import Tensor, nn

from shrinkage.compact import surgery
from shrinkage.compact.layout import LayoutCodec, register_codec
from shrinkage.compact.module_attrs import tensor_attr
from shrinkage.compact.optional_libraries import register_imported, when_imported
from shrinkage.graph import rules as fx_rules
from shrinkage.layers import ZeroWidthConv

Shrink = Callable[[nn.Module, dict[int, Tensor]], nn.Module]


class WeightUse(enum.Enum):
    """How the graph applies a layer's ``weight``."""

    #: ``y = x @ weight.T + bias`` over the last dim (``aten.linear``); weight ``(out, in)``
    LINEAR = "linear"
    #: ``y = x @ weight + bias`` (``aten.addmm``/``mm``/``matmul``); weight ``(in, out)``
    MATMUL = "matmul"
    #: a convolution over dims 2.. (``aten.conv*``); weight ``(out, in / groups, *kernel)``
    CONV = "conv"
    #: a per-channel scale and shift on dim 1 (batch norm, PReLU): no input channels of its own
    PER_CHANNEL = "per-channel"


@dataclass(frozen=True)
class LayerType:
    """How compaction treats modules of ``types`` (and their subclasses).

    ``shrink(module, keep)`` returns a smaller copy keeping ``keep[d]`` (bool masks) along
    canonical dim ``d`` (0: outputs, 1: inputs). ``fx_rule`` is the module's channel rule
    when ``torch.fx`` captures it as one node (``None``: that capture refuses the module).
    ``codecs`` maps each concrete class to its layout codec for ``shrinkage.save`` /
    ``shrinkage.load`` (a class without one cannot be saved once shrunk).
    """

    types: tuple[type[nn.Module], ...]
    shrink: Shrink
    weight_use: WeightUse
    fx_rule: Callable[..., Any] | None = None
    zero_width: bool = False
    codecs: Mapping[type[nn.Module], LayoutCodec] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def input_dim(self) -> int:
        """The dim of the layer's input that holds its input channels."""
        return -1 if self.weight_use in (WeightUse.LINEAR, WeightUse.MATMUL) else 1


_REGISTRY: dict[type[nn.Module], LayerType] = {}


def register_layer_type(layer_type: LayerType) -> LayerType:
    """Make compaction support ``layer_type.types`` (replacing an earlier registration of
    the same classes). Returns ``layer_type``."""
    for cls in layer_type.types:
        _REGISTRY[cls] = layer_type
    for cls, codec in layer_type.codecs.items():
        register_codec(cls, codec)
    return layer_type


def layer_type_of(module: nn.Module) -> LayerType | None:
    """The registered layer type of ``module`` (its own class or the nearest base)."""
    register_imported()
    return next((_REGISTRY[c] for c in type(module).__mro__ if c in _REGISTRY), None)


def registered_layer_types() -> Iterator[tuple[type[nn.Module], LayerType]]:
    register_imported()
    yield from list(_REGISTRY.items())


def canonical_param(module: nn.Module, attr: str) -> Tensor:
    """``module.<attr>`` with dim 0 the output channels and dim 1 the input channels."""
    t: Tensor = getattr(module, attr).detach()
    return t.t() if attr == "weight" and _is_matmul(module) else t


def stored_dim(module: nn.Module, attr: str, dim: int) -> int:
    """The dim of ``module.<attr>`` as stored that canonical dim ``dim`` refers to."""
    return 1 - dim if attr == "weight" and _is_matmul(module) else dim


def _is_matmul(module: nn.Module) -> bool:
    lt = layer_type_of(module)
    return lt is not None and lt.weight_use is WeightUse.MATMUL


# -- the layer types of PyTorch -----------------------------------------------------------


def _codecs(*classes: type[nn.Module]) -> Mapping[type[nn.Module], LayoutCodec]:
    from shrinkage.compact.layout import CODECS

    return MappingProxyType({cls: CODECS[cls] for cls in classes})


def _register_builtin() -> None:
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    register_layer_type(LayerType(
        (*convs, ZeroWidthConv), surgery.shrink_conv, WeightUse.CONV, fx_rules.conv, zero_width=True,
        codecs=_codecs(*convs, ZeroWidthConv),
    ))  # fmt: skip
    register_layer_type(LayerType(
        (nn.Linear,), surgery.shrink_linear, WeightUse.LINEAR, fx_rules.linear, zero_width=True,
        codecs=_codecs(nn.Linear),
    ))  # fmt: skip
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    register_layer_type(LayerType(
        norms, surgery.shrink_batchnorm, WeightUse.PER_CHANNEL, fx_rules.batchnorm, zero_width=True,
        codecs=_codecs(*norms),
    ))  # fmt: skip
    register_layer_type(LayerType(
        (nn.PReLU,), surgery.shrink_prelu, WeightUse.PER_CHANNEL, fx_rules.prelu, codecs=_codecs(nn.PReLU)
    ))  # fmt: skip


# -- Hugging Face transformers' Conv1D (GPT-2 and relatives): a linear layer whose weight is (in, out)


def _matrix_shrink(module: nn.Module, keep: dict[int, Tensor]) -> nn.Module:
    weight, bias = tensor_attr(module, "weight").detach(), tensor_attr(module, "bias").detach()
    out_idx = keep[0].nonzero().flatten() if 0 in keep else None
    in_idx = keep[1].nonzero().flatten() if 1 in keep else None
    if in_idx is not None:
        weight = weight[in_idx]
    if out_idx is not None:
        weight, bias = weight[:, out_idx], bias[out_idx]
    return surgery.sliced_copy(module, {"weight": weight, "bias": bias}, nx=weight.shape[0], nf=weight.shape[1])


def _register_conv1d() -> None:
    """Hugging Face transformers' ``Conv1D`` (GPT-2 and relatives)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return
    from shrinkage.compact.layout import matrix_codec

    codecs: Mapping[type[nn.Module], LayoutCodec] = MappingProxyType({Conv1D: matrix_codec(Conv1D)})
    register_layer_type(LayerType((Conv1D,), _matrix_shrink, WeightUse.MATMUL, codecs=codecs))


when_imported("transformers", _register_conv1d)


_register_builtin()
