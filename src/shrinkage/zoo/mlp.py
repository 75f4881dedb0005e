"""Fully connected baseline (LeNet-300-100 style, with configurable hidden sizes)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from shrinkage.errors import ConfigError

__all__ = ["MLP"]


class MLP(nn.Sequential):
    """flatten - fc1 - relu1 - fc2 - relu2 - ... - fc{k+1} for ``k`` hidden layers.

    With the default two hidden layers the children are flatten, fc1, relu1, fc2, relu2,
    fc3; with the defaults this is the 784-500-300-10 network used in MNIST sparsity
    experiments.
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (500, 300),
        num_classes: int = 10,
    ) -> None:
        if any(width < 1 for width in hidden):
            raise ConfigError(f"MLP hidden sizes must be positive, got {tuple(hidden)}")
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        width = in_features
        for index, out in enumerate(hidden, start=1):
            layers.append((f"fc{index}", nn.Linear(width, out)))
            layers.append((f"relu{index}", nn.ReLU()))
            width = out
        layers.append((f"fc{len(hidden) + 1}", nn.Linear(width, num_classes)))
        super().__init__(OrderedDict(layers))
