"""Build a model of the zoo from a name and the dataset's geometry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from shrinkage.errors import ConfigError
from shrinkage.zoo.convnet import ConvNet
from shrinkage.zoo.lenet import LeNet
from shrinkage.zoo.mlp import MLP
from shrinkage.zoo.resnet_cifar import resnet20, resnet32, resnet56

__all__ = ["MODELS", "ModelSpec", "build_model"]


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build and for what inputs (channels, square image size, classes)."""

    name: str
    in_channels: int = 1
    num_classes: int = 10
    image_size: int = 28


MODELS: dict[str, Callable[[ModelSpec], nn.Module]] = {
    "lenet": lambda s: LeNet(s.in_channels, s.num_classes, s.image_size),
    "mlp": lambda s: MLP(s.in_channels * s.image_size**2, num_classes=s.num_classes),
    "convnet": lambda s: ConvNet(s.in_channels, s.num_classes),
    "resnet20": lambda s: resnet20(s.in_channels, s.num_classes),
    "resnet32": lambda s: resnet32(s.in_channels, s.num_classes),
    "resnet56": lambda s: resnet56(s.in_channels, s.num_classes),
}


def build_model(spec: ModelSpec) -> nn.Module:
    """Return a freshly initialized model for ``spec``.

    Raises :class:`ConfigError` for an unknown name or a non-positive size.
    """
    constructor = MODELS.get(spec.name)
    if constructor is None:
        raise ConfigError(f"unknown model '{spec.name}' (known: {', '.join(MODELS)})")
    for key in ("in_channels", "num_classes", "image_size"):
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model {key} must be a positive integer, got {value!r}")
    return constructor(spec)
