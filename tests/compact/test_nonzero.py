"""``used_along``: which slices of a tensor hold a non-zero, against the plain definition."""

from __future__ import annotations

import pytest
import torch

from shrinkage.nonzero import used_along, used_rows_and_columns


def _reference(t: torch.Tensor, dim: int) -> torch.Tensor:
    others = tuple(d for d in range(t.dim()) if d != dim)
    return t.ne(0).any(dim=others) if others else t.ne(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(6,), (5, 7), (6, 4, 3, 3), (3, 0, 2), (0, 4)])
def test_used_along_every_dim_matches_any_non_zero(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(shape, generator=gen).to(dtype)
    if t.numel():
        flat = t.view(-1)
        flat[torch.rand(flat.numel(), generator=gen) < 0.6] = 0.0  # most slices keep a few entries
        t.select(0, 0).zero_()  # a whole zero slice along the first dim
        if t.dim() > 1:
            t.select(1, t.shape[1] - 1).zero_()  # and along the second
    for dim in range(t.dim()):
        torch.testing.assert_close(used_along(t, dim), _reference(t, dim))
        torch.testing.assert_close(used_along(t, dim - t.dim()), _reference(t, dim))


def test_signed_zeros_are_zero_and_nan_inf_and_tiny_values_are_not() -> None:
    t = torch.zeros(6, 3)
    t[0, 1] = -0.0
    t[1, 0] = float("nan")
    t[2, 2] = float("inf")
    t[3, 1] = float("-inf")
    t[4, 0] = torch.finfo(torch.float32).tiny / 4  # subnormal
    t[5, :] = torch.tensor([1e-30, -1e-30, 0.0])  # opposite signs must not cancel
    assert used_along(t, 0).tolist() == [False, True, True, True, True, True]
    assert used_along(t, 1).tolist() == [True, True, True]


def test_integer_and_bool_tensors() -> None:
    t = torch.tensor([[0, 2, 0], [0, 0, 0]])
    assert used_along(t, 0).tolist() == [True, False]
    assert used_along(t.bool(), 1).tolist() == [False, True, False]


@pytest.mark.parametrize("shape", [(5, 7), (6, 4, 3, 3), (4, 3, 0), (2, 3, 2, 2, 2)])
def test_rows_and_columns_in_one_pass_equal_the_two_scans(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(shape, generator=gen)
    if t.numel():
        t[1] = 0
        t[:, 0] = 0
        t.view(-1)[3] = float("nan")
    rows, cols = used_rows_and_columns(t)
    torch.testing.assert_close(rows, _reference(t, 0))
    torch.testing.assert_close(cols, _reference(t, 1))
    with pytest.raises(ValueError, match="two or more dims"):
        used_rows_and_columns(torch.ones(3))
