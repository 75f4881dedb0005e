"""Compaction of real architectures: torchvision classification models with random
coupled groups zeroed, non-zero BatchNorm shifts and biases, and equal outputs."""

from __future__ import annotations

import pytest
import torch

from support.exactness import assert_compacts_exactly
from support.sparsity import randomize_norm_stats
from support.zoo import FAST, SLOW, build, zero_coupled, zero_heads

torchvision = pytest.importorskip("torchvision")


def _check(name: str, size: int) -> None:
    model = build(name)
    gen = torch.Generator().manual_seed(0)
    randomize_norm_stats(model, gen)
    shape = (2, 3, size, size)
    assert zero_coupled(model, shape, gen, 0.25) > 0
    zero_heads(model, gen, 0.25)
    assert_compacts_exactly(model, torch.randn(shape, generator=gen))


@pytest.mark.parametrize("name", sorted(FAST))
def test_torchvision_model_compacts_exactly(name: str) -> None:
    _check(name, FAST[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_large_torchvision_model_compacts_exactly(name: str) -> None:
    _check(name, SLOW[name])
