"""The randomized nuclear-norm prox against the full one (``NuclearNorm(method=RANDOMIZED)``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import shrinkage.penalties.nuclear_norm as nuclear_module
from shrinkage.config import parse_config
from shrinkage.config.resolve import resolve_rules
from shrinkage.errors import ConfigError
from shrinkage.groups import Matrix
from shrinkage.optim import NamePattern, ProximalOptimizer, Regularizer, Rule
from shrinkage.penalties import NuclearNorm, SvdMethod


def _low_rank(m: int, n: int, rank: int, gen: torch.Generator, top: float = 10.0) -> torch.Tensor:
    q1, _ = torch.linalg.qr(torch.randn(m, rank, generator=gen, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, rank, generator=gen, dtype=torch.float64))
    s = torch.linspace(top, 1.0, rank, dtype=torch.float64)
    return (q1 * s) @ q2.t()


@pytest.fixture
def sketch_calls(monkeypatch):
    """Counts how often the randomized path runs (the fallback is the full SVD)."""
    calls: list[int] = []
    original = nuclear_module._randomized_svd

    def counting(matrix, q, power_iterations):
        calls.append(q)
        return original(matrix, q, power_iterations)

    monkeypatch.setattr(nuclear_module, "_randomized_svd", counting)
    return calls


def _full(matrix: torch.Tensor, strength: float, step: float = 1.0) -> torch.Tensor:
    out = matrix.clone()
    NuclearNorm(strength).prox_(out, step)
    return out


def test_first_prox_of_a_matrix_is_the_full_one(sketch_calls):
    gen = torch.Generator().manual_seed(0)
    m = _low_rank(60, 80, 5, gen)
    x = m.clone()
    NuclearNorm(0.5, method=SvdMethod.RANDOMIZED).prox_(x, 1.0)
    assert sketch_calls == []
    assert torch.equal(x, _full(m, 0.5))


def test_low_rank_matrix_keeps_the_same_rank_through_the_sketch(sketch_calls):
    gen = torch.Generator().manual_seed(1)
    penalty = NuclearNorm(1.5, method=SvdMethod.RANDOMIZED)
    x = _low_rank(60, 80, 6, gen)
    penalty.prox_(x, 1.0)  # full SVD; records the kept rank of this storage
    kept = int((torch.linalg.svdvals(x) > 1e-9).sum())
    for _ in range(3):
        m = _low_rank(60, 80, 6, gen)  # singular values 10, 8.2, ..., 2.8, 1: five above 1.5
        x.copy_(m)
        penalty.prox_(x, 1.0)
        want = _full(m, 1.5)
        torch.testing.assert_close(x, want, atol=1e-10, rtol=0)
        assert int((torch.linalg.svdvals(x) > 1e-9).sum()) == int((torch.linalg.svdvals(want) > 1e-9).sum()) == 5
    assert kept == 5 and sketch_calls == [5 + penalty.oversampling] * 3


def test_sketch_too_small_falls_back_to_the_exact_full_prox(sketch_calls):
    gen = torch.Generator().manual_seed(2)
    penalty = NuclearNorm(0.1, method=SvdMethod.RANDOMIZED, oversampling=2)
    x = _low_rank(40, 50, 2, gen)
    penalty.prox_(x, 1.0)  # rank 2 recorded
    m = torch.randn(40, 50, generator=gen, dtype=torch.float64)  # ~40 singular values above 0.1
    x.copy_(m)
    penalty.prox_(x, 1.0)
    assert sketch_calls == [4]  # the sketch ran, saw its smallest value above the threshold ...
    assert torch.equal(x, _full(m, 0.1))  # ... and the full prox replaced it, bit for bit


def test_low_rank_plus_small_perturbation_as_after_a_gradient_step(sketch_calls):
    gen = torch.Generator().manual_seed(3)
    penalty = NuclearNorm(0.5, method=SvdMethod.RANDOMIZED)
    base = _low_rank(100, 120, 8, gen)
    x = base.clone()
    penalty.prox_(x, 1.0)
    for _ in range(3):
        m = x + 1e-3 * torch.randn(100, 120, generator=gen, dtype=torch.float64)
        want = _full(m, 0.5)
        x.copy_(m)
        penalty.prox_(x, 1.0)
        torch.testing.assert_close(x, want, atol=1e-8, rtol=0)
        assert int((torch.linalg.svdvals(x) > 1e-6).sum()) == int((torch.linalg.svdvals(want) > 1e-6).sum())
    assert len(sketch_calls) == 3


def test_randomized_prox_keeps_zero_rows_columns_and_the_global_generator(sketch_calls):
    gen = torch.Generator().manual_seed(4)
    penalty = NuclearNorm(0.5, method=SvdMethod.RANDOMIZED)
    x = _low_rank(60, 70, 5, gen).float()
    x[3] = 0
    x[:, [0, 9]] = 0
    penalty.prox_(x, 1.0)
    state = torch.random.get_rng_state()
    m = x.clone()
    penalty.prox_(x, 1.0)
    assert sketch_calls and torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(x[3], torch.zeros(70)) and torch.equal(x[:, [0, 9]], torch.zeros(60, 2))
    torch.testing.assert_close(x, _full(m, 0.5), atol=1e-5, rtol=0)


def test_training_with_the_randomized_prox_reaches_the_same_ranks(sketch_calls):
    """Proximal SGD with every=2 from low-rank weights (as a few epochs in): same final rank
    per layer as the full prox, and close weights."""

    def train(method: SvdMethod) -> nn.Module:
        torch.manual_seed(5)
        model = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
        with torch.no_grad():
            for layer in (model[0], model[2]):
                u, s, vh = torch.linalg.svd(layer.weight, full_matrices=False)
                layer.weight.copy_((u[:, :6] * s[:6] * 3) @ vh[:6])
        rules = [Rule(NamePattern(n), Matrix(), NuclearNorm(0.1, method=method), every=2) for n in ("0", "2")]
        opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), Regularizer(model, rules))
        x, y = torch.randn(128, 40), torch.randint(0, 3, (128,))
        for _ in range(40):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return model

    full, fast = train(SvdMethod.FULL), train(SvdMethod.RANDOMIZED)
    assert len(sketch_calls) >= 30  # all but the first prox of each layer (and any fallback) used the sketch
    for name in ("0", "2"):
        a, b = getattr(full, name).weight.detach(), getattr(fast, name).weight.detach()
        ranks = [int((torch.linalg.svdvals(w) > 1e-4 * torch.linalg.svdvals(w)[0]).sum()) for w in (a, b)]
        assert 0 < ranks[0] == ranks[1] <= 10
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


def test_bad_options_are_one_line_config_errors():
    for kwargs, pattern in [
        ({"method": "randomized"}, "nuclear_norm.method must be an SvdMethod"),
        ({"oversampling": 0}, "nuclear_norm.oversampling must be an integer >= 1"),
        ({"power_iterations": -1}, "nuclear_norm.power_iterations must be an integer >= 0"),
        ({"power_iterations": 1.5}, "nuclear_norm.power_iterations"),
    ]:
        with pytest.raises(ConfigError, match=pattern) as err:
            NuclearNorm(0.1, **kwargs)
        assert "\n" not in str(err.value)


def test_config_key_selects_the_randomized_method():
    text = """
name: t
model: {name: lenet}
data: {name: mnist}
train: {lr: 0.02, epochs: 1}
regularization:
  rules:
    - select: {names: [fc1]}
      groups: [matrix]
      penalty: {kind: nuclear_norm, strength: 1.0e-2, method: randomized, oversampling: 4}
"""
    (rule,) = resolve_rules(parse_config(text, "t.yaml").regularization)
    assert rule.penalty == NuclearNorm(0.01, method=SvdMethod.RANDOMIZED, oversampling=4)
    plain = text.replace(", method: randomized, oversampling: 4", "")
    (default,) = resolve_rules(parse_config(plain, "t.yaml").regularization)
    assert default.penalty.method is SvdMethod.FULL
    with pytest.raises(ConfigError, match=r"penalty\.method: unknown value 'svd'"):
        parse_config(text.replace("method: randomized", "method: svd"), "t.yaml")
