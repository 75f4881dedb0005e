"""Models and example inputs the budget tests select on (random weights, seeded)."""

from __future__ import annotations

import torch
from torch import nn

from shrinkage.zoo import ModelSpec, build_model
from support.zoo import build


def budget_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """``lenet`` / ``resnet20`` from the zoo, or a torchvision model by name."""
    torch.manual_seed(0)
    if name == "lenet":
        return build_model(ModelSpec("lenet", 1, 10, 28)).eval(), torch.randn(2, 1, 28, 28)
    if name == "resnet20":
        return build_model(ModelSpec("resnet20", 3, 10, 32)).eval(), torch.randn(2, 3, 32, 32)
    size = 224 if name == "vit_b_16" else 32
    return build(name), torch.randn(1, 3, size, size)
