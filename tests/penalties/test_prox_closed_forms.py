"""Proximal maps and values of the penalties against independent closed forms.

Every closed form here is written directly in numpy float64 (per-row loops, numpy SVD)
and never calls the library.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shrinkage.errors import ConfigError, ShrinkageError
from shrinkage.penalties import L1, GroupLasso, NuclearNorm, SparseGroupLasso

# ---------------------------------------------------------------- closed forms (numpy)


def _st(v: np.ndarray, t: float) -> np.ndarray:
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


def _block(row: np.ndarray, t: float) -> np.ndarray:
    n = math.sqrt(float(np.sum(row * row)))
    if n <= t:
        return np.zeros_like(row)
    return (1.0 - t / n) * row


def prox_l1(v, t):
    return _st(v, t)


def prox_gl(v, t, scale):
    c = math.sqrt(v.shape[1]) if scale else 1.0
    return np.stack([_block(row, t * c) for row in v])


def prox_sgl(v, t, alpha):
    p = v.shape[1]
    out = []
    for row in v:
        u = _st(row, t * alpha)
        out.append(_block(u, t * (1 - alpha) * math.sqrt(p)))
    return np.stack(out)


def prox_nn(v, t):
    u, s, vh = np.linalg.svd(v, full_matrices=False)
    return u @ np.diag(np.maximum(s - t, 0.0)) @ vh


def r_l1(x):
    return float(np.abs(x).sum())


def r_gl(x, scale):
    c = math.sqrt(x.shape[1]) if scale else 1.0
    return c * sum(math.sqrt(float(np.sum(r * r))) for r in x)


def r_sgl(x, alpha):
    p = x.shape[1]
    return (1 - alpha) * math.sqrt(p) * sum(math.sqrt(float(np.sum(r * r))) for r in x) + alpha * float(
        np.abs(x).sum()
    )


def r_nn(x):
    return float(np.linalg.svd(x, compute_uv=False).sum())


# (id, make(strength), R(x) without strength, prox(v, t), group-separable)
CASES = [
    ("l1", lambda s: L1(s), r_l1, prox_l1, True),
    ("gl", lambda s: GroupLasso(s), lambda x: r_gl(x, False), lambda v, t: prox_gl(v, t, False), True),
    ("gl_scaled", lambda s: GroupLasso(s, scale_by_size=True), lambda x: r_gl(x, True),
     lambda v, t: prox_gl(v, t, True), True),
]
for _a in (0.0, 0.1, 0.5, 0.9, 1.0):
    CASES.append(
        (f"sgl_a{_a}", (lambda a: lambda s: SparseGroupLasso(s, alpha=a))(_a),
         (lambda a: lambda x: r_sgl(x, a))(_a), (lambda a: lambda v, t: prox_sgl(v, t, a))(_a), True)
    )
CASES.append(("nuclear", lambda s: NuclearNorm(s), r_nn, prox_nn, False))

GROUP_CASES = [c for c in CASES if c[4]]
IDS = [c[0] for c in CASES]
SHAPES = [(1, 1), (1, 5), (6, 1), (3, 4), (5, 2), (4, 7), (8, 9)]


def _random_matrix(rng: np.random.Generator, shape) -> np.ndarray:
    """Rows with very different scales so that some fall below the threshold."""
    m = rng.standard_normal(shape)
    m *= rng.uniform(0.0, 2.0, size=(shape[0], 1))
    # a few exact zeros and one all-zero row when there is room
    m[rng.random(shape) < 0.1] = 0.0
    if shape[0] > 2:
        m[rng.integers(shape[0])] = 0.0
    return m


def _prox(penalty, v: np.ndarray, step: float, dtype=torch.float64) -> np.ndarray:
    x = torch.tensor(v, dtype=dtype)
    ptr = x.data_ptr()
    assert penalty.prox_(x, step) is None
    assert x.data_ptr() == ptr  # in place
    assert x.shape == v.shape
    return x.double().numpy()


# ---------------------------------------------------------------- (a) closed form


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_prox_equals_closed_form_float64(case):
    _, make, _, closed, _ = case
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        for strength, step in [(0.7, 0.3), (1.0, 1.0), (2.5, 0.2), (0.05, 1.3)]:
            v = _random_matrix(rng, shape)
            t = step * strength
            got = _prox(make(strength), v, step)
            want = closed(v, t)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_prox_equals_closed_form_float32(case):
    _, make, _, closed, _ = case
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        v = _random_matrix(rng, shape).astype(np.float32).astype(np.float64)
        got = _prox(make(0.8), v, 0.5, dtype=torch.float32)
        np.testing.assert_allclose(got, closed(v, 0.4), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_prox_writes_through_non_contiguous_view(case):
    """Groupings hand penalties views (e.g. a transposed weight): prox_ must write through."""
    _, make, _, closed, _ = case
    rng = np.random.default_rng(2)
    base = torch.tensor(_random_matrix(rng, (7, 4)))  # matrix seen as its transpose (4, 7)
    v = base.t().numpy().copy()
    view = base.t()
    assert not view.is_contiguous()
    make(1.1).prox_(view, 0.5)
    np.testing.assert_allclose(base.t().numpy(), closed(v, 0.55), rtol=1e-10, atol=1e-12)


def test_sgl_extremes_reduce_to_group_lasso_and_l1():
    rng = np.random.default_rng(3)
    for shape in SHAPES:
        v = _random_matrix(rng, shape)
        a0 = _prox(SparseGroupLasso(0.9, alpha=0.0), v, 1.0)
        gl = _prox(GroupLasso(0.9, scale_by_size=True), v, 1.0)
        np.testing.assert_allclose(a0, gl, rtol=1e-12, atol=1e-14)
        a1 = _prox(SparseGroupLasso(0.9, alpha=1.0), v, 1.0)
        l1 = _prox(L1(0.9), v, 1.0)
        np.testing.assert_array_equal(a1, l1)


# ---------------------------------------------------------------- (b) argmin


def _objective(x: np.ndarray, v: np.ndarray, t: float, reg) -> float:
    return 0.5 * float(np.sum((x - v) ** 2)) + t * reg(x)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_prox_is_the_minimizer(case):
    """f(X) >= f(X*) + 1/2 ||X - X*||^2 for every X (f is 1-strongly convex, X* its argmin)."""
    _, make, reg, _, _ = case
    rng = np.random.default_rng(4)
    for shape in [(1, 3), (3, 4), (5, 2), (4, 6)]:
        for t in (0.1, 0.6, 1.5):
            v = _random_matrix(rng, shape)
            x_star = _prox(make(t), v, 1.0)
            f_star = _objective(x_star, v, t, reg)
            candidates = [v, np.zeros_like(v)]
            for _ in range(40):
                d = rng.standard_normal(shape) * rng.choice([1e-4, 1e-2, 0.3, 2.0])
                if rng.random() < 0.3:  # sparse directions probe the kinks at zero
                    d *= rng.random(shape) < 0.3
                candidates.append(x_star + d)
            # also: revive a zeroed group / zero a surviving one
            for g in range(shape[0]):
                y = x_star.copy()
                y[g] = 0.0 if np.any(y[g]) else 1e-3 * rng.standard_normal(shape[1])
                candidates.append(y)
            for x in candidates:
                gap = _objective(x, v, t, reg) - f_star
                assert gap >= 0.5 * float(np.sum((x - x_star) ** 2)) - 1e-9, (shape, t, gap)


# ---------------------------------------------------------------- (c) zero threshold


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_zero_threshold_is_identity(case, dtype):
    _, make, _, _, _ = case
    g = torch.Generator().manual_seed(5)
    for shape in SHAPES:
        m = torch.randn(shape, generator=g, dtype=dtype)
        m[0, 0] = 0.0
        m[-1] *= 1e-30  # tiny rows must survive a zero threshold too
        for penalty, step in [(make(0.0), 1.0), (make(0.0), 0.0), (make(3.0), 0.0)]:
            x = m.clone()
            penalty.prox_(x, step)
            assert torch.equal(x, m), (shape, penalty, step)


# ---------------------------------------------------------------- (d) exact zeros


def test_group_lasso_zeroes_groups_at_and_below_threshold():
    v = torch.tensor(
        [
            [3.0, 4.0, 0.0],  # norm 5: exactly at t
            [0.0, -3.0, 4.0],  # norm 5: exactly at t
            [1.0, 2.0, 2.0],  # norm 3: below
            [2.0, 3.0, 6.0],  # norm 7: above -> scaled by 1 - 5/7
            [0.0, 0.0, 0.0],  # zero stays zero (no 0/0)
        ],
        dtype=torch.float64,
    )
    x = v.clone()
    GroupLasso(2.5).prox_(x, 2.0)  # t = 5 exactly
    assert torch.equal(x[:3], torch.zeros(3, 3, dtype=torch.float64))
    assert torch.equal(x[4], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(x[3], v[3] * (2.0 / 7.0), rtol=1e-15, atol=0)
    assert not torch.isnan(x).any()


def test_group_lasso_threshold_equal_to_computed_norm_gives_exact_zero():
    g = torch.Generator().manual_seed(6)
    for dtype in (torch.float32, torch.float64):
        for _ in range(50):
            row = torch.randn(1, 7, generator=g, dtype=dtype)
            t = row.norm(dim=1).item()  # the row norm exactly as torch computes it
            x = row.clone()
            GroupLasso(t).prox_(x, 1.0)
            assert torch.equal(x, torch.zeros_like(x))
            # a threshold below the norm leaves the group alive
            x = row.clone()
            GroupLasso(t * (1 - 1e-3)).prox_(x, 1.0)
            assert (x != 0).any()


def test_group_lasso_scale_by_size_threshold_exact():
    # P = 4 -> c = 2; step * strength = 1 -> threshold 2
    v = torch.tensor([[1.0, -1.0, 1.0, 1.0], [2.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    x = v.clone()
    GroupLasso(0.5, scale_by_size=True).prox_(x, 2.0)
    assert torch.equal(x[:2], torch.zeros(2, 4, dtype=torch.float64))
    torch.testing.assert_close(x[2], v[2] / 3.0, rtol=1e-15, atol=0)
    # without scaling the same rows survive (threshold 1)
    y = v.clone()
    GroupLasso(0.5).prox_(y, 2.0)
    assert (y.abs().amax(dim=1) > 0).all()
    # P = 9 -> c = 3
    row = torch.tensor([[1.0] * 9], dtype=torch.float64)  # norm 3
    z = row.clone()
    GroupLasso(1.0, scale_by_size=True).prox_(z, 1.0)
    assert torch.equal(z, torch.zeros_like(z))


def test_l1_zeroes_entries_at_and_below_threshold():
    v = torch.tensor([[0.5, -0.5, 0.25, -0.75, 0.0, 2.0]], dtype=torch.float64)
    x = v.clone()
    L1(0.25).prox_(x, 2.0)  # t = 0.5 exactly
    assert torch.equal(x, torch.tensor([[0.0, 0.0, 0.0, -0.25, 0.0, 1.5]], dtype=torch.float64))


def test_sparse_group_lasso_exact_zeros():
    # P = 4, alpha = 0.5, t = 2: soft-threshold by 1 then block threshold 2 * 0.5 * 2 = 2
    v = torch.tensor(
        [
            [2.0, 2.0, -2.0, 2.0],  # -> [1, 1, -1, 1], norm 2 == threshold -> zero
            [1.0, -0.5, 0.25, 1.0],  # every |w| <= 1 -> zero after the L1 step
            [4.0, 1.0, 0.0, 0.0],  # -> [3, 0, 0, 0], norm 3 -> [1, 0, 0, 0]
        ],
        dtype=torch.float64,
    )
    x = v.clone()
    SparseGroupLasso(1.0, alpha=0.5).prox_(x, 2.0)
    assert torch.equal(x[:2], torch.zeros(2, 4, dtype=torch.float64))
    torch.testing.assert_close(x[2], torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64), rtol=1e-15, atol=0)
    # single weights become exactly zero inside a surviving group
    assert x[2, 1] == 0 and x[2, 2] == 0
    # alpha = 0: pure group threshold t * sqrt(P) = 2 * 2 = 4
    y = torch.tensor([[2.0, 2.0, 2.0, 2.0], [4.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    SparseGroupLasso(1.0, alpha=0.0).prox_(y, 2.0)
    assert torch.equal(y[0], torch.zeros(4, dtype=torch.float64)) and (y[1] != 0).any()
    # alpha = 1: pure L1 with t = 2
    z = torch.tensor([[2.0, -2.0, 1.0, 3.0]], dtype=torch.float64)
    SparseGroupLasso(1.0, alpha=1.0).prox_(z, 2.0)
    assert torch.equal(z, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64))


def test_nuclear_norm_threshold_at_or_above_spectral_norm_gives_exact_zero():
    g = torch.Generator().manual_seed(7)
    for dtype in (torch.float32, torch.float64):
        for shape in [(3, 5), (6, 2), (4, 4)]:
            m = torch.randn(shape, generator=g, dtype=dtype)
            top = torch.linalg.svd(m, full_matrices=False).S.max().item()
            for t in (top, top * 1.5):
                x = m.clone()
                NuclearNorm(t).prox_(x, 1.0)
                assert torch.equal(x, torch.zeros_like(x))


def test_nuclear_norm_drops_small_singular_values():
    g = torch.Generator().manual_seed(8)
    q1, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    s = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    m = q1[:, :5] @ torch.diag(s) @ q2.t()
    x = m.clone()
    penalty = NuclearNorm(2.0, rank_tolerance=1e-9)
    penalty.prox_(x, 1.0)  # singular value 2 is exactly at threshold
    got = torch.linalg.svdvals(x)
    torch.testing.assert_close(got[:2], torch.tensor([3.0, 1.0], dtype=torch.float64), rtol=0, atol=1e-12)
    assert got[2:].abs().max() < 1e-12
    torch.testing.assert_close(x, q1[:, :2] @ torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)) @ q2[:, :2].t(),
                               rtol=0, atol=1e-12)
    stats = penalty.structure(x)
    assert stats == {"rank": 2.0, "rank_fraction": 2 / 5}


def test_nuclear_norm_keeps_exact_zero_rows_and_columns():
    """Zero rows/columns of V stay zero in prox(V) (the exact map preserves them); a
    filter or channel zeroed by a group penalty on the same weight must not be revived."""
    g = torch.Generator().manual_seed(9)
    for dtype in (torch.float32, torch.float64):
        for _ in range(20):
            m = torch.randn(6, 8, generator=g, dtype=dtype)
            m[2] = 0
            m[:, [1, 5]] = 0
            x = m.clone()
            NuclearNorm(0.3).prox_(x, 1.0)
            assert torch.equal(x[2], torch.zeros(8, dtype=dtype))
            assert torch.equal(x[:, [1, 5]], torch.zeros(6, 2, dtype=dtype))
            np.testing.assert_allclose(x.double().numpy(), prox_nn(m.double().numpy(), 0.3), atol=1e-5)


# ---------------------------------------------------------------- (e) non-expansive


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_prox_is_non_expansive(case):
    _, make, _, _, _ = case
    rng = np.random.default_rng(10)
    for i in range(150):
        shape = SHAPES[i % len(SHAPES)]
        a = _random_matrix(rng, shape)
        b = a + rng.standard_normal(shape) * rng.choice([1e-6, 1e-2, 0.5, 3.0])
        t = float(rng.choice([0.05, 0.5, 1.0, 3.0]))
        pa, pb = _prox(make(t), a, 1.0), _prox(make(t), b, 1.0)
        assert np.linalg.norm(pa - pb) <= np.linalg.norm(a - b) * (1 + 1e-12) + 1e-12


# ---------------------------------------------------------------- (f) separability


@pytest.mark.parametrize("case", GROUP_CASES, ids=[c[0] for c in GROUP_CASES])
def test_groups_are_independent(case):
    _, make, _, _, _ = case
    g = torch.Generator().manual_seed(11)
    for _ in range(20):
        v = torch.randn(6, 5, generator=g, dtype=torch.float64)
        row = int(torch.randint(6, (1,), generator=g))
        w = v.clone()
        w[row] = torch.randn(5, generator=g, dtype=torch.float64) * 3
        pv, pw = v.clone(), w.clone()
        make(0.9).prox_(pv, 1.0)
        make(0.9).prox_(pw, 1.0)
        others = [r for r in range(6) if r != row]
        assert torch.equal(pv[others], pw[others])


def test_nuclear_norm_is_not_row_separable():
    """Sanity check that the separability test above could fail."""
    g = torch.Generator().manual_seed(12)
    v = torch.randn(4, 4, generator=g, dtype=torch.float64)
    w = v.clone()
    w[0] *= 5
    pv, pw = v.clone(), w.clone()
    NuclearNorm(0.5).prox_(pv, 1.0)
    NuclearNorm(0.5).prox_(pw, 1.0)
    assert not torch.allclose(pv[1:], pw[1:])


# ---------------------------------------------------------------- (g) value


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_value_matches_formula(case):
    _, make, reg, _, _ = case
    rng = np.random.default_rng(13)
    for shape in SHAPES:
        for strength in (0.0, 0.3, 2.0):
            m = _random_matrix(rng, shape)
            val = make(strength).value(torch.tensor(m))
            assert val.dim() == 0
            assert val.item() == pytest.approx(strength * reg(m), rel=1e-12, abs=1e-12)


def test_value_differs_with_scale_by_size():
    m = torch.ones(2, 9, dtype=torch.float64)  # each row norm 3
    assert GroupLasso(1.0).value(m).item() == pytest.approx(6.0)
    assert GroupLasso(1.0, scale_by_size=True).value(m).item() == pytest.approx(18.0)
    assert SparseGroupLasso(1.0, alpha=0.25).value(m).item() == pytest.approx(0.75 * 3 * 6 + 0.25 * 18)


def _away_from_zero(shape, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
    sign = torch.randint(0, 2, shape, generator=g).double() * 2 - 1
    return (m * sign).requires_grad_(True)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_value_gradcheck(case):
    _, make, _, _, _ = case
    penalty = make(0.7)
    for i, shape in enumerate([(3, 4), (5, 2), (1, 6)]):
        m = _away_from_zero(shape, 14 + i)
        assert torch.autograd.gradcheck(penalty.value, (m,), eps=1e-6, atol=1e-7)


def test_value_gradients_closed_form():
    m = _away_from_zero((4, 3), 20)
    GroupLasso(0.5, scale_by_size=True).value(m).backward()
    want = 0.5 * math.sqrt(3) * m.detach() / m.detach().norm(dim=1, keepdim=True)
    torch.testing.assert_close(m.grad, want, rtol=1e-12, atol=1e-14)

    m.grad = None
    L1(0.5).value(m).backward()
    assert torch.equal(m.grad, 0.5 * torch.sign(m.detach()))

    m.grad = None
    NuclearNorm(0.5).value(m).backward()
    u, _, vh = np.linalg.svd(m.detach().numpy(), full_matrices=False)
    np.testing.assert_allclose(m.grad.numpy(), 0.5 * u @ vh, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- (h) configuration errors

MAKERS = {
    "l1": lambda s: L1(s),
    "group_lasso": lambda s: GroupLasso(s),
    "sparse_group_lasso": lambda s: SparseGroupLasso(s),
    "nuclear_norm": lambda s: NuclearNorm(s),
}


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("bad", [-1.0, -1e-12, -3, float("nan"), float("inf"), float("-inf"), "1", None])
def test_bad_strength_raises_config_error(name, bad):
    with pytest.raises(ConfigError, match=rf"{name}\.strength") as info:
        MAKERS[name](bad)
    assert isinstance(info.value, ShrinkageError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", list(MAKERS))
def test_zero_and_integer_strengths_are_accepted(name):
    for ok in (0, 0.0, 3, 1e-12):
        assert MAKERS[name](ok).strength == ok


@pytest.mark.parametrize("bad", [-0.1, 1.1, -1e-9, 1 + 1e-9, float("nan"), float("inf")])
def test_bad_alpha_raises_config_error(bad):
    with pytest.raises(ConfigError, match=r"sparse_group_lasso\.alpha"):
        SparseGroupLasso(1.0, alpha=bad)


def test_alpha_bounds_accepted():
    assert SparseGroupLasso(1.0, alpha=0.0).alpha == 0.0
    assert SparseGroupLasso(1.0, alpha=1.0).alpha == 1.0


def test_induces_zeros_flags_and_structure():
    m = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [2.0, 3.0]])
    assert L1(1.0).induces_zeros and GroupLasso(1.0).induces_zeros and SparseGroupLasso(1.0).induces_zeros
    assert not NuclearNorm(1.0).induces_zeros
    assert GroupLasso(1.0).structure(m) == {"zero_groups": 0.5}
    assert L1(1.0).structure(m) == {"zero_groups": 0.5, "zero_weights": 5 / 8}
    assert SparseGroupLasso(1.0).structure(m) == {"zero_groups": 0.5, "zero_weights": 5 / 8}
    assert NuclearNorm(1.0).structure(torch.zeros(3, 4)) == {"rank": 0.0, "rank_fraction": 0.0}
