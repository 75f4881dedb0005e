"""ProximalOptimizer, ZeroMask and the subgradient mode against manual computations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from shrinkage.errors import ConfigError
from shrinkage.groups import Channels, Filters, Matrix
from shrinkage.optim import ModuleType, NamePattern, ProximalOptimizer, Regularizer, Rule, ZeroMask
from shrinkage.penalties import L1, GroupLasso, NuclearNorm, SparseGroupLasso


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 2 * 2, 4)).double()


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(8, 4, generator=g, dtype=torch.float64)


def loss_of(model, x, y):
    return ((model(x) - y) ** 2).mean()


# ------------------------------------------------------------- manual proximal maps


def manual_group_rows_(w2d: torch.Tensor, t: float) -> None:
    for r in range(w2d.shape[0]):
        n = float(torch.sqrt((w2d[r] ** 2).sum()))
        w2d[r] = 0.0 if n <= t else w2d[r] * (1 - t / n)


def manual_l1_(w: torch.Tensor, t: float) -> None:
    w.copy_(torch.where(w.abs() <= t, torch.zeros_like(w), w - t * torch.sign(w)))


def manual_svt(w: torch.Tensor, t: float) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return u @ torch.diag((s - t).clamp_min(0)) @ vh


# ------------------------------------------------------------- step = SGD step + prox


def test_step_equals_sgd_then_prox_manual():
    model = small_net()
    conv, fc = model[0], model[3]
    with torch.no_grad():  # filters 0 and 3 fall below the threshold, the others survive
        conv.weight.mul_(torch.tensor([0.1, 1.0, 3.0, 0.2, 2.0], dtype=torch.float64).view(5, 1, 1, 1))
    rules = [
        Rule(ModuleType((nn.Conv2d,)), Filters(), GroupLasso(1.5)),
        Rule(NamePattern("3"), Filters(), L1(0.2)),
        Rule(NamePattern("3"), Matrix(), NuclearNorm(0.3)),
    ]
    reg = Regularizer(model, rules)
    lr_conv, lr_fc = 0.1, 0.05
    opt = ProximalOptimizer(
        torch.optim.SGD([{"params": conv.parameters(), "lr": lr_conv}, {"params": fc.parameters(), "lr": lr_fc}]),
        reg,
    )
    ref = copy.deepcopy(model)
    x, y = batch()

    for it in range(3):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()

        ref.zero_grad()
        loss_of(ref, x, y).backward()
        with torch.no_grad():
            rc, rf = ref[0], ref[3]
            for p, lr in ((rc.weight, lr_conv), (rc.bias, lr_conv), (rf.weight, lr_fc), (rf.bias, lr_fc)):
                p -= lr * p.grad
            manual_group_rows_(rc.weight.view(5, -1), lr_conv * 1.5)
            manual_l1_(rf.weight, lr_fc * 0.2)
            rf.weight.copy_(manual_svt(rf.weight, lr_fc * 0.3))
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert opt.prox_steps == 3
    # the strength was large enough to remove whole filters exactly
    zero_filters = (conv.weight.detach().reshape(5, -1).abs().amax(dim=1) == 0).sum()
    assert 0 < zero_filters < 5


def test_step_passes_closure_and_returns_loss():
    model = small_net()
    reg = Regularizer(model, [Rule(ModuleType((nn.Conv2d,)), Filters(), GroupLasso(0.1))])
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), reg)
    x, y = batch()

    def closure():
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and opt.prox_steps == 1
    assert opt.param_groups is opt.optimizer.param_groups


# ------------------------------------------------------------- exact zeros with momentum + weight decay


def test_momentum_weight_decay_still_gives_exact_zero_groups():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(128, 8, generator=g, dtype=torch.float64)
    a = torch.randn(3, 4, generator=g, dtype=torch.float64) * 2
    y = x[:, :3] @ a  # only inputs 0..2 matter
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(8, 4)).double()
    reg = Regularizer(model, [Rule(ModuleType((nn.Linear,)), Channels(), GroupLasso(0.05))])
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3), reg)
    for _ in range(300):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    w = model[0].weight.detach()
    assert torch.equal(w[:, 3:], torch.zeros(4, 5, dtype=w.dtype))  # exact, not just small
    assert (w[:, :3].norm(dim=0) > 0.1).all()
    assert reg.structure()[reg.terms[0].label]["zero_groups"] == 5 / 8


# ------------------------------------------------------------- threshold follows the lr


def _rows_model(seed=5):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(5, 6, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(6, 5, generator=g, dtype=torch.float64) + 3.0)  # norms ~ 7
    return nn.Sequential(lin)


def _zero_grads(model):
    for p in model.parameters():
        p.grad = torch.zeros_like(p)


def _norms(model):
    return model[0].weight.detach().norm(dim=1).clone()


def test_lr_scheduler_changes_threshold():
    model = _rows_model()
    strength = 2.0
    reg = Regularizer(model, [Rule(ModuleType((nn.Linear,)), Filters(), GroupLasso(strength))])
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), reg)
    sched = torch.optim.lr_scheduler.StepLR(opt.optimizer, step_size=1, gamma=0.25)
    expected_lrs = [0.1, 0.025, 0.00625]
    for lr in expected_lrs:
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)
        before = _norms(model)
        _zero_grads(model)
        opt.step()
        torch.testing.assert_close(_norms(model), before - lr * strength, rtol=1e-12, atol=1e-12)
        sched.step()


def test_lr_changed_by_hand_changes_threshold():
    model = _rows_model()
    reg = Regularizer(model, [Rule(ModuleType((nn.Linear,)), Filters(), GroupLasso(1.0))])
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), reg)
    opt.param_groups[0]["lr"] = 0.7
    before = _norms(model)
    _zero_grads(model)
    opt.step()
    torch.testing.assert_close(_norms(model), before - 0.7, rtol=1e-12, atol=1e-12)


def test_every_k_applies_prox_every_k_steps_with_k_lr():
    model = nn.Sequential(_rows_model(6)[0], _rows_model(7)[0])
    lr, s, k = 0.05, 1.0, 3
    reg = Regularizer(
        model,
        [
            Rule(NamePattern("0"), Filters(), GroupLasso(s), every=k),
            Rule(NamePattern("1"), Filters(), GroupLasso(s)),
        ],
    )
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=lr), reg)
    w0, w1 = model[0].weight, model[1].weight
    for step in range(1, 8):
        b0, b1 = w0.detach().clone(), w1.detach().norm(dim=1).clone()
        _zero_grads(model)
        opt.step()
        if step % k:
            assert torch.equal(w0.detach(), b0)
        else:
            torch.testing.assert_close(w0.detach().norm(dim=1), b0.norm(dim=1) - k * lr * s, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(w1.detach().norm(dim=1), b1 - lr * s, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------- state dict


def _train(opt, model, steps, seed):
    for i in range(steps):
        x, y = batch(seed + i)
        opt.zero_grad()
        loss_of(model, x, y).backward()
        opt.step()


def _make_opt(model):
    reg = Regularizer(
        model,
        [
            Rule(ModuleType((nn.Conv2d,)), Filters(), GroupLasso(0.3), every=2),
            Rule(ModuleType((nn.Linear,)), Channels(), SparseGroupLasso(0.2, alpha=0.3)),
        ],
    )
    return ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3), reg)


def test_state_dict_round_trip():
    model = small_net()
    opt = _make_opt(model)
    _train(opt, model, 5, seed=10)
    state = copy.deepcopy(opt.state_dict())
    assert state["prox_steps"] == 5

    clone = copy.deepcopy(model)
    restored = _make_opt(clone)
    restored.load_state_dict(state)
    assert restored.prox_steps == 5
    for p, q in zip(model.parameters(), clone.parameters()):
        torch.testing.assert_close(
            restored.optimizer.state[q]["momentum_buffer"], opt.optimizer.state[p]["momentum_buffer"], rtol=0, atol=0
        )
    # an optimizer that did not load the state diverges (prox parity and momentum)
    fresh_model = copy.deepcopy(model)
    fresh = _make_opt(fresh_model)

    _train(opt, model, 3, seed=20)
    _train(restored, clone, 3, seed=20)
    _train(fresh, fresh_model, 3, seed=20)
    assert restored.prox_steps == opt.prox_steps == 8
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.allclose(p, q) for p, q in zip(model.parameters(), fresh_model.parameters()))


# ------------------------------------------------------------- configuration errors


def test_parameters_with_different_lrs_in_one_term_raise():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4)).double()
    reg = Regularizer(model, [Rule(ModuleType((nn.Linear,)), Filters(include_bias=True), GroupLasso(0.1))])
    lin = model[0]
    opt = ProximalOptimizer(
        torch.optim.SGD([{"params": [lin.weight], "lr": 0.1}, {"params": [lin.bias], "lr": 0.01}]), reg
    )
    _zero_grads(model)
    with pytest.raises(ConfigError, match="different learning rates") as info:
        opt.step()
    assert reg.terms[0].label in str(info.value)

    # the same lr in two parameter groups is fine
    opt2 = ProximalOptimizer(
        torch.optim.SGD([{"params": [lin.weight], "lr": 0.1}, {"params": [lin.bias], "lr": 0.1}]), reg
    )
    _zero_grads(model)
    opt2.step()


def test_regularized_parameter_missing_from_optimizer_raises():
    model = small_net()
    reg = Regularizer(model, [Rule(ModuleType((nn.Linear,)), Filters(), GroupLasso(0.1))])
    with pytest.raises(ConfigError, match=reg.terms[0].label):
        ProximalOptimizer(torch.optim.SGD(model[0].parameters(), lr=0.1), reg)


# ------------------------------------------------------------- ZeroMask


def _mask_setup():
    model = small_net(2)
    conv, fc = model[0], model[3]
    reg = Regularizer(
        model,
        [
            Rule(ModuleType((nn.Conv2d,)), Filters(include_bias=True), GroupLasso(0.1)),
            Rule(NamePattern("3"), Matrix(), NuclearNorm(0.1)),
        ],
    )
    with torch.no_grad():
        conv.weight[[1, 3]] = 0.0
        conv.bias[[1, 3]] = 0.0
        conv.weight[0, 1, 2, 2] = 0.0  # a single zero weight inside a live filter
        fc.weight[:, 0] = 0.0  # zeros under a nuclear-norm-only term: not masked
    return model, reg


def test_zero_mask_keeps_captured_zeros_only():
    model, reg = _mask_setup()
    conv, fc = model[0], model[3]
    mask = ZeroMask.capture(reg)
    assert mask.zero_count == 2 * 18 + 2 + 1
    zw, zb = conv.weight.detach() == 0, conv.bias.detach() == 0
    captured_w, captured_b = conv.weight.detach().clone(), conv.bias.detach().clone()

    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    for i in range(4):
        x, y = batch(30 + i)
        sgd.zero_grad()
        loss_of(model, x, y).backward()
        sgd.step()
    # plain SGD revived the zeros (otherwise this test could not fail) ...
    assert (conv.weight.detach()[zw] != 0).any()
    assert (fc.weight.detach()[:, 0] != 0).any()
    fc_before = fc.weight.detach().clone()
    mask.apply_()
    # ... apply_ puts exactly the captured zeros back
    assert torch.equal(conv.weight.detach()[zw], torch.zeros(int(zw.sum()), dtype=torch.float64))
    assert torch.equal(conv.bias.detach()[zb], torch.zeros(int(zb.sum()), dtype=torch.float64))
    free_w = conv.weight.detach()[~zw]
    assert (free_w != 0).all() and (free_w != captured_w[~zw]).all()
    assert (conv.bias.detach()[~zb] != captured_b[~zb]).all()
    # the nuclear-norm-only layer is left alone
    assert torch.equal(fc.weight.detach(), fc_before)


def test_zero_mask_applied_after_every_step():
    model, reg = _mask_setup()
    conv = model[0]
    mask = ZeroMask.capture(reg)
    zw = conv.weight.detach() == 0
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-2)
    for i in range(5):
        x, y = batch(40 + i)
        sgd.zero_grad()
        loss_of(model, x, y).backward()
        sgd.step()
        mask.apply_()
        assert torch.equal(conv.weight.detach() == 0, zw)
    assert mask.zero_count == int(zw.sum()) + 2


def test_zero_mask_nuclear_only_creates_no_mask():
    model = small_net()
    fc = model[3]
    with torch.no_grad():
        fc.weight[0] = 0.0
    reg = Regularizer(model, [Rule(ModuleType((nn.Linear, nn.Conv2d)), Matrix(), NuclearNorm(0.5))])
    mask = ZeroMask.capture(reg)
    assert mask.zero_count == 0
    with torch.no_grad():
        fc.weight[0] = 1.0
    mask.apply_()
    assert (fc.weight.detach()[0] == 1.0).all()


def test_zero_mask_shared_parameter_under_nuclear_and_group_terms_is_masked():
    model = small_net()
    fc = model[3]
    with torch.no_grad():
        fc.weight[2] = 0.0
    reg = Regularizer(
        model,
        [Rule(NamePattern("3"), Matrix(), NuclearNorm(0.5)), Rule(NamePattern("3"), Filters(), GroupLasso(0.5))],
    )
    mask = ZeroMask.capture(reg)
    assert mask.zero_count == 20
    with torch.no_grad():
        fc.weight[2] = 1.0
    mask.apply_()
    assert (fc.weight.detach()[2] == 0).all()


# ------------------------------------------------------------- subgradient mode


@pytest.mark.parametrize("kind", ["filters", "channels"])
def test_subgradient_mode_gradient(kind):
    torch.manual_seed(8)
    lin = nn.Linear(3, 2).double()
    model = nn.Sequential(lin)
    strength = 0.37
    groups = Filters() if kind == "filters" else Channels()
    reg = Regularizer(model, [Rule(ModuleType((nn.Linear,)), groups, GroupLasso(strength))])
    g = torch.Generator().manual_seed(9)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 2, generator=g, dtype=torch.float64)

    total = ((model(x) - y) ** 2).mean() + reg.value()
    total.backward()

    w, b = lin.weight.detach(), lin.bias.detach()
    r = x @ w.t() + b - y  # (5, 2)
    loss_gw = 2.0 / r.numel() * r.t() @ x  # analytic gradient of the mean squared error
    loss_gb = 2.0 / r.numel() * r.sum(dim=0)
    dim = 1 if kind == "filters" else 0
    reg_g = strength * w / w.norm(dim=dim, keepdim=True)
    torch.testing.assert_close(lin.weight.grad, loss_gw + reg_g, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.bias.grad, loss_gb, rtol=1e-12, atol=1e-12)
    # the regularizer's value is the hand formula
    assert reg.value().item() == pytest.approx(strength * float(w.norm(dim=dim).sum()), rel=1e-12)


# ------------------------------------------------------------- structure read between proxes


def test_structure_between_proxes_reports_what_the_last_prox_left():
    """With ``every: 3``, a step that is not a prox step revives the zeroed singular values
    and groups; the reported structure is still the one right after the last prox, and
    falls back to the weights as they are once anything else (a truncation, fine-tuning)
    has touched them."""
    model = small_net()
    reg = Regularizer(model, [
        Rule(NamePattern("0"), Matrix(), NuclearNorm(2.0), every=3),
        Rule(NamePattern("3"), Filters(), GroupLasso(1.8), every=3),
    ])  # fmt: skip
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), reg)
    rank_label, groups_label = reg.terms[0].label, reg.terms[1].label
    _train(opt, model, 3, seed=10)  # ends on a prox step
    right_after = reg.structure()
    assert right_after[rank_label]["rank"] < 5 and right_after[groups_label]["zero_groups"] > 0
    _train(opt, model, 1, seed=20)  # a gradient step only: everything comes back above zero
    revived = {t.label: t.penalty.structure(t.grouping.gather()) for t in reg.terms}
    assert revived[rank_label]["rank"] == 5 and revived[groups_label]["zero_groups"] == 0
    assert reg.structure() == right_after
    with torch.no_grad():  # anything but the optimizer's own steps: the weights as they are
        model[0].weight.mul_(1.0)
    assert reg.structure()[rank_label] == revived[rank_label]
    assert reg.structure()[groups_label] == right_after[groups_label]  # its parameters are untouched
    _train(opt, model, 2, seed=30)  # the next prox step: fresh again
    assert reg.structure() == {t.label: t.penalty.structure(t.grouping.gather()) for t in reg.terms}
