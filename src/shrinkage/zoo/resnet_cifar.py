"""ResNets for CIFAR-10 (He et al., "Deep Residual Learning for Image Recognition", 2016).

Depth 6n+2: a 3x3 stem with 16 channels, three stages of n basic blocks with 16, 32
and 64 channels (the last two start with stride 2), global average pooling and a
linear classifier. Where a block changes shape the shortcut is a 1x1 convolution with
stride 2 plus BatchNorm (the paper's option B) -- a real module rather than option A's
zero padding, so compaction can prune it like any other convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from shrinkage.errors import ConfigError

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet32", "resnet56"]


class BasicBlock(nn.Module):
    """conv1-bn1-relu-conv2-bn2, plus the shortcut, then relu.

    ``relu`` is applied twice (it is stateless); ``shortcut`` is ``nn.Identity`` when the
    input and output shapes agree, else ``Sequential(conv 1x1, BatchNorm2d)``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet of depth 6n+2 for 32x32 inputs (works for any size >= 8).

    Children: conv1, bn1, relu, layer1, layer2, layer3, avgpool, flatten, fc.
    """

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(16, 16, blocks, stride=1)
        self.layer2 = self._make_stage(16, 32, blocks, stride=2)
        self.layer3 = self._make_stage(32, 64, blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        self._init_weights()

    @staticmethod
    def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        """He (Kaiming) normal init for convolutions, as in the paper; BN to identity."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet20(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-20 (n = 3), about 0.27M parameters."""
    return CifarResNet(20, in_channels, num_classes)


def resnet32(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-32 (n = 5), about 0.47M parameters."""
    return CifarResNet(32, in_channels, num_classes)


def resnet56(in_channels: int = 3, num_classes: int = 10) -> CifarResNet:
    """ResNet-56 (n = 9), about 0.86M parameters."""
    return CifarResNet(56, in_channels, num_classes)
