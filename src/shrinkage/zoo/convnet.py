"""A small convolutional network with batch normalization."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["ConvNet"]


class ConvNet(nn.Sequential):
    """Three 3x3 conv-BN-ReLU stages (32, 64, 128 channels), global average pool, fc.

    Children: conv1 bn1 relu1 pool1, conv2 bn2 relu2 pool2, conv3 bn3 relu3, avgpool,
    flatten, fc. Global pooling makes it work for any input size (MNIST or CIFAR).
    The convolutions have no bias because the BatchNorm that follows cancels it.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        layers: list[tuple[str, nn.Module]] = []
        widths = (in_channels, 32, 64, 128)
        for stage, width in enumerate(widths[1:], start=1):
            layers += [
                (f"conv{stage}", nn.Conv2d(widths[stage - 1], width, 3, padding=1, bias=False)),
                (f"bn{stage}", nn.BatchNorm2d(width)),
                (f"relu{stage}", nn.ReLU()),
            ]
            if stage < 3:
                layers.append((f"pool{stage}", nn.MaxPool2d(2)))
        layers += [
            ("avgpool", nn.AdaptiveAvgPool2d(1)),
            ("flatten", nn.Flatten()),
            ("fc", nn.Linear(widths[-1], num_classes)),
        ]
        super().__init__(OrderedDict(layers))
