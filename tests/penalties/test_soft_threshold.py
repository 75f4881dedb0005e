"""The in-place soft-threshold is bit-for-bit the textbook ``sign(x) * max(|x| - t, 0)``."""

from __future__ import annotations

import pytest
import torch

from shrinkage.penalties.base import soft_threshold_


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t", [0.0, 1e-30, 1e-3, 0.1, 0.5, 1.0, 3.0])
def test_soft_threshold_is_bitwise_the_sign_formula(dtype, t):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 97, generator=gen, dtype=dtype) * torch.rand(200, 1, generator=gen, dtype=dtype) * 3
    x[torch.rand(x.shape, generator=gen) < 0.1] = 0
    x[0, :6] = torch.tensor([t, -t, 1e-30, -1e-30, float("inf"), float("-inf")], dtype=dtype)
    want = torch.sign(x) * torch.clamp(x.abs() - t, min=0)
    got = x.clone()
    soft_threshold_(got, t)
    assert torch.equal(got, want)
    assert torch.equal(torch.signbit(got[got != 0]), torch.signbit(want[want != 0]))


def test_soft_threshold_writes_through_a_view():
    base = torch.tensor([[2.0, -0.5], [-3.0, 0.25]])
    soft_threshold_(base.t(), 1.0)
    assert torch.equal(base, torch.tensor([[1.0, 0.0], [-2.0, 0.0]]))
