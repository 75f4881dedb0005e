"""Compaction of real architectures: torchvision classification models with random
coupled groups zeroed, non-zero BatchNorm shifts and biases, and equal outputs."""

from __future__ import annotations

import pytest
import torch
from support.sparsity import param_count, randomize_norm_stats
from torch import nn

import shrinkage
from shrinkage.compact import max_output_difference
from shrinkage.groups import CoupledChannels

torchvision = pytest.importorskip("torchvision")

#: name -> input size; the slow ones still run in CI, marked so a quick run can skip them
FAST = {
    "resnet18": 32, "vgg11_bn": 32, "alexnet": 64, "squeezenet1_1": 64, "mobilenet_v2": 32,
    "mobilenet_v3_small": 32, "mnasnet0_5": 32, "efficientnet_b0": 32, "regnet_y_400mf": 32, "googlenet": 64,
}  # fmt: skip
SLOW = {
    "resnet50": 32, "resnext50_32x4d": 32, "wide_resnet50_2": 32, "vgg11": 32, "densenet121": 32, "inception_v3": 75,
    "convnext_tiny": 32, "vit_b_16": 224,
}  # fmt: skip
#: the auxiliary classifiers only run in training mode; building them would only cost time
KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False}, "inception_v3": {"aux_logits": False, "init_weights": False}}


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, **KWARGS.get(name, {})).eval()


def _zero_coupled(model: nn.Module, shape: tuple[int, ...], gen: torch.Generator, fraction: float) -> int:
    """Zero a random fraction of every coupled group set, as a group Lasso would; returns how many."""
    kind = CoupledChannels(shape)
    groupings = kind.build_for(model, [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)])
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


def _check(name: str, size: int) -> None:
    model = _build(name)
    gen = torch.Generator().manual_seed(0)
    randomize_norm_stats(model, gen)
    shape = (2, 3, size, size)
    assert _zero_coupled(model, shape, gen, 0.25) > 0
    x = torch.randn(shape, generator=gen)
    small = shrinkage.compact(model, (x,))
    fresh = torch.randn(shape, generator=gen)
    with torch.no_grad():
        scale = float(model(fresh).abs().max())  # random BN statistics make logits of any size
    assert max_output_difference(model, small, (fresh,)) <= 1e-5 * max(1.0, scale)
    assert param_count(small) < param_count(model)


@pytest.mark.parametrize("name", sorted(FAST))
def test_torchvision_model_compacts_exactly(name: str) -> None:
    _check(name, FAST[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_large_torchvision_model_compacts_exactly(name: str) -> None:
    _check(name, SLOW[name])
