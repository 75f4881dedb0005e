"""LeNet as used in the Structured Sparsity Learning paper (Caffe's LeNet-5 variant)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from shrinkage.errors import ConfigError

__all__ = ["LeNet"]


def _conv_pool_size(size: int) -> int:
    """Spatial size after a 5x5 valid convolution followed by 2x2 max pooling."""
    return (size - 4) // 2


class LeNet(nn.Sequential):
    """conv(20, 5x5) - maxpool - conv(50, 5x5) - maxpool - fc(500) - fc(num_classes).

    Children: conv1, relu1, pool1, conv2, relu2, pool2, flatten, fc1, relu3, fc2. Layer
    sizes are Caffe's MNIST LeNet; unlike that prototxt (ReLU only after fc1), a ReLU
    also follows each convolution. With 28x28 inputs fc1 sees 50*4*4 = 800 features,
    for 431,080 parameters in total (1 input channel, 10 classes).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        final = _conv_pool_size(_conv_pool_size(image_size))
        if final < 1:
            raise ConfigError(f"LeNet needs image_size >= 16, got {image_size}")
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 20, kernel_size=5)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(20, 50, kernel_size=5)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2)),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(50 * final * final, 500)),
                    ("relu3", nn.ReLU()),
                    ("fc2", nn.Linear(500, num_classes)),
                ]
            )
        )
