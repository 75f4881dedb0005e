"""Torchvision models for the compaction tests: built without weights, with coupled
groups zeroed at random as a group Lasso would leave them."""

from __future__ import annotations

from functools import cache
from types import ModuleType

import torch
from torch import nn

from shrinkage.groups import CoupledChannels, Heads

from support.benchmark_modules import load_benchmark

#: name -> input size; the slow ones still run in CI, marked so a quick run can skip them
FAST = {
    "resnet18": 32, "vgg11_bn": 32, "alexnet": 64, "squeezenet1_1": 64, "mobilenet_v2": 32,
    "mobilenet_v3_small": 32, "mnasnet0_5": 32, "efficientnet_b0": 32, "regnet_y_400mf": 32, "googlenet": 64,
    "shufflenet_v2_x0_5": 32,
}  # fmt: skip
SLOW = {
    "resnet50": 32, "resnext50_32x4d": 32, "wide_resnet50_2": 32, "vgg11": 32, "densenet121": 32, "inception_v3": 75,
    "convnext_tiny": 32, "vit_b_16": 224,
}  # fmt: skip
#: the auxiliary classifiers only run in training mode; building them would only cost time
KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}


def build(name: str, seed: int = 0) -> nn.Module:
    import torchvision

    torch.manual_seed(seed)
    return getattr(torchvision.models, name)(weights=None, **KWARGS.get(name, {})).eval()


def zero_coupled(model: nn.Module, shape: tuple[int, ...], gen: torch.Generator, fraction: float) -> int:
    """Zero a random fraction of every coupled group set, as a group Lasso would; returns how many."""
    kind = CoupledChannels(shape)
    groupings = kind.build_for(
        model, [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    )
    zeroed = 0
    with torch.no_grad():
        for g in groupings:
            matrix = g.gather()
            n = matrix.shape[0]
            rows = torch.randperm(n, generator=gen)[: int(n * fraction)]
            matrix[rows] = 0
            g.scatter_(matrix)
            zeroed += len(rows)
    return zeroed


def zero_heads(model: nn.Module, gen: torch.Generator, fraction: float) -> int:
    """Zero a random fraction of the heads of every attention layer; returns how many."""
    zeroed = 0
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.MultiheadAttention):
                for g in Heads().build(name, m):
                    matrix = g.gather()
                    rows = torch.randperm(matrix.shape[0], generator=gen)[: max(1, int(matrix.shape[0] * fraction))]
                    matrix[rows] = 0
                    g.scatter_(matrix)
                    zeroed += len(rows)
    return zeroed


@cache
def zoo_models() -> ModuleType:
    """``benchmarks/zoo_models.py``: the timm and Hugging Face models of the zoo benchmark
    (one list, so the slow tests check exactly the models the benchmark reports)."""
    return load_benchmark("zoo_models")
