"""Compaction of real architectures: torchvision classification models with random
coupled groups zeroed, non-zero BatchNorm shifts and biases, and equal outputs."""

from __future__ import annotations

import pytest
import torch
from support.sparsity import param_count, randomize_norm_stats
from support.zoo import FAST, SLOW, build, zero_coupled, zero_heads

import shrinkage
from shrinkage.compact import max_output_difference

torchvision = pytest.importorskip("torchvision")


def _check(name: str, size: int) -> None:
    model = build(name)
    gen = torch.Generator().manual_seed(0)
    randomize_norm_stats(model, gen)
    shape = (2, 3, size, size)
    assert zero_coupled(model, shape, gen, 0.25) > 0
    zero_heads(model, gen, 0.25)
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
