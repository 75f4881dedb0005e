"""The proximal threshold under real schedules: a floor on its lr, an exact truncation at the end."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from shrinkage.errors import ConfigError
from shrinkage.groups import Channels, Filters, Matrix
from shrinkage.optim import ModuleType, NamePattern, ProximalOptimizer, Regularizer, Rule, ThresholdPolicy
from shrinkage.penalties import GroupLasso, NuclearNorm

REMEDY = ThresholdPolicy(min_lr_fraction=0.05, truncate_at_end=True)
STEPS = 400


def _rank(w: torch.Tensor) -> int:
    s = torch.linalg.svdvals(w.detach().double())
    return int((s > 1e-5 * s[0]).sum())


def _zero_columns(w: torch.Tensor) -> torch.Tensor:
    return w.detach().abs().amax(dim=0) == 0


def _regression(kind: str, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A noisy linear teacher: inputs of decaying importance (groups), or a spectrum of
    decaying singular values (nuclear norm), so some structures sit near the threshold."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if kind == "groups":
        teacher = torch.randn(6, 24, generator=g) * torch.linspace(1.5, 0.0, 24)
        return nn.Sequential(nn.Linear(24, 6)), teacher
    u = torch.linalg.qr(torch.randn(12, 12, generator=g))[0]
    v = torch.linalg.qr(torch.randn(24, 12, generator=g))[0]
    return nn.Sequential(nn.Linear(24, 12)), u @ torch.diag(torch.linspace(1.0, 0.05, 12)) @ v.t()


def _train_cosine(kind: str, policy: ThresholdPolicy, seed: int) -> tuple[torch.Tensor | int, torch.Tensor | int]:
    """SGD (momentum 0.9) with a per-step cosine schedule decaying to 0; the structure at
    mid-training and at the end (after ``finish_``): zero input groups, or the rank."""
    model, teacher = _regression(kind, seed)
    rule = (Rule(ModuleType((nn.Linear,)), Channels(), GroupLasso(2.0)) if kind == "groups"
            else Rule(ModuleType((nn.Linear,)), Matrix(), NuclearNorm(0.6)))  # fmt: skip
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt = ProximalOptimizer(sgd, Regularizer(model, [rule]), policy)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=STEPS)
    g = torch.Generator().manual_seed(seed + 100)
    structure = _zero_columns if kind == "groups" else _rank
    mid = None
    for step in range(STEPS):
        x = torch.randn(32, 24, generator=g)
        y = x @ teacher.t() + torch.randn(32, teacher.shape[0], generator=g)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        schedule.step()
        if step == STEPS // 2 - 1:
            mid = structure(model[0].weight)
    assert schedule.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # the schedule did decay to 0
    opt.finish_()
    return mid, structure(model[0].weight)


def test_zero_groups_stay_zero_to_the_end_of_a_cosine_schedule_only_with_the_remedy() -> None:
    revived_plain, revived_remedy = 0, 0
    for seed in range(4):
        mid, end = _train_cosine("groups", ThresholdPolicy(), seed)
        revived_plain += int((mid & ~end).sum())
        mid, end = _train_cosine("groups", REMEDY, seed)
        assert mid.any()  # the penalty did zero groups mid-training
        revived_remedy += int((mid & ~end).sum())
    assert revived_plain > 0  # without the floor, groups zeroed mid-training end non-zero
    assert revived_remedy == 0


def test_rank_does_not_grow_back_at_the_end_of_a_cosine_schedule_only_with_the_remedy() -> None:
    grown_plain = 0
    for seed in range(4):
        mid, end = _train_cosine("nuclear", ThresholdPolicy(), seed)
        grown_plain += max(0, end - mid)
        mid, end = _train_cosine("nuclear", REMEDY, seed)
        assert mid < 12 and end <= mid  # truncated mid-training, and not grown back
    assert grown_plain > 0  # without the floor, the rank grows back as the lr decays


# ------------------------------------------------------------- the floor itself


def _rows_model() -> nn.Module:
    g = torch.Generator().manual_seed(5)
    lin = nn.Linear(5, 6, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(6, 5, generator=g, dtype=torch.float64) + 3.0)  # row norms ~ 7
    return nn.Sequential(lin)


def test_threshold_uses_the_floored_lr_while_the_step_follows_the_schedule() -> None:
    model = _rows_model()
    reg = Regularizer(model, [Rule(ModuleType((nn.Linear,)), Filters(), GroupLasso(2.0))])
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = ProximalOptimizer(sgd, reg, ThresholdPolicy(min_lr_fraction=0.3))
    schedule = torch.optim.lr_scheduler.StepLR(sgd, step_size=1, gamma=0.25)
    for lr in (0.1, 0.025, 0.00625):
        assert sgd.param_groups[0]["lr"] == pytest.approx(lr)
        before = model[0].weight.detach().norm(dim=1).clone()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        expected = before - max(lr, 0.3 * 0.1) * 2.0
        torch.testing.assert_close(model[0].weight.detach().norm(dim=1), expected, rtol=1e-12, atol=1e-12)
        schedule.step()


def test_finish_removes_what_the_last_threshold_would_and_keeps_the_rest_unchanged() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Linear(5, 8, bias=False)).double()
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([0.01, 1.0, 0.02, 2.0, 3.0], dtype=torch.float64).view(5, 1))
        u, _, vh = torch.linalg.svd(torch.randn(8, 5, dtype=torch.float64), full_matrices=False)
        model[1].weight.copy_((u * torch.tensor([4.0, 2.0, 1.0, 0.05, 0.01], dtype=torch.float64)) @ vh)
    rules = [Rule(NamePattern("0"), Filters(), GroupLasso(1.0)), Rule(NamePattern("1"), Matrix(), NuclearNorm(1.0))]
    reg = Regularizer(model, rules)
    first, second = model[0].weight.detach().clone(), model[1].weight.detach().clone()
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), reg, ThresholdPolicy(truncate_at_end=True))
    threshold = 0.1  # lr * strength
    small = first.norm(dim=1) <= threshold
    assert opt.finish_() == int(small.sum()) + 2  # two rows, two singular values
    w0 = model[0].weight.detach()
    assert torch.equal(w0[small], torch.zeros_like(w0[small])) and torch.equal(w0[~small], first[~small])
    s = torch.linalg.svdvals(model[1].weight.detach())
    torch.testing.assert_close(s[:3], torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64), rtol=1e-10, atol=1e-10)
    assert float(s[3:].abs().max()) < 1e-10
    assert not torch.equal(model[1].weight.detach(), second)


def test_finish_is_a_no_op_without_the_policy() -> None:
    model = _rows_model()
    with torch.no_grad():
        model[0].weight[0] = 1e-4
    before = copy.deepcopy(model.state_dict())
    reg = Regularizer(model, [Rule(ModuleType((nn.Linear,)), Filters(), GroupLasso(1.0))])
    assert ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), reg).finish_() == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, math.inf, True, "0.1"])
def test_policy_validates_min_lr_fraction(bad: object) -> None:
    with pytest.raises(ConfigError, match="min_lr_fraction"):
        ThresholdPolicy(min_lr_fraction=bad)  # type: ignore[arg-type]


def test_policy_validates_truncate_at_end() -> None:
    with pytest.raises(ConfigError, match="truncate_at_end"):
        ThresholdPolicy(truncate_at_end="yes")  # type: ignore[arg-type]


def test_initial_lr_survives_a_state_round_trip_and_old_states_load() -> None:
    model = _rows_model()
    reg = Regularizer(model, [Rule(ModuleType((nn.Linear,)), Filters(), GroupLasso(1.0))])
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = ProximalOptimizer(sgd, reg, ThresholdPolicy(min_lr_fraction=0.5))
    sgd.param_groups[0]["lr"] = 0.001  # decayed
    state = copy.deepcopy(opt.state_dict())
    fresh_sgd = torch.optim.SGD(model.parameters(), lr=0.001)  # built at the decayed lr, as a resumed run may be
    fresh = ProximalOptimizer(fresh_sgd, reg, ThresholdPolicy(min_lr_fraction=0.5))
    fresh.load_state_dict(state)
    assert fresh.threshold_lrs() == opt.threshold_lrs() == {id(model[0].weight): 0.05}
    old = {"optimizer": state["optimizer"], "prox_steps": 3}  # written before floors and scales existed
    fresh.load_state_dict(old)
    assert fresh.prox_steps == 3 and reg.scales == {0: 1.0}
