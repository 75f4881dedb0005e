"""prune(): the weakest removable groups zeroed until the compacted model meets a budget.

Every selection is measured exactly (compacted, then counted), so the checks here are on
the compacted model: within 2% below the target, equal outputs to the masked model on a
fresh input, hardware-friendly widths with ``round_to``, one clear line when a budget
cannot be met.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import shrinkage
from shrinkage import Budget, BudgetError
from shrinkage.metrics import count_macs, count_parameters

from support.budget_models import budget_model
from support.exactness import assert_compacts_exactly

#: the binding target must be reached within [(1 - TOLERANCE) * target, target]
TOLERANCE = 0.02


_model = budget_model


def _check(name: str, budget: Budget) -> None:
    model, x = _model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = shrinkage.prune(model, x, budget)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the input model changed"
    # measured independently of prune(): compact the masked model again (equal outputs on
    # fresh inputs, fewer parameters) and count
    small = assert_compacts_exactly(result.model, x, rtol=1e-4)
    macs = count_macs(small, x).total / count_macs(model, x).total
    params = count_parameters(small) / count_parameters(model)
    got = {"macs": macs, "params": params}
    targets = budget.targets()
    assert all(got[k] <= t for k, t in targets.items()), f"{name}: {got} for {budget}"
    # the binding target is reached within 2%; the others hold with room to spare
    assert max(got[k] / t for k, t in targets.items()) >= 1 - TOLERANCE, f"{name}: {got} for {budget}"
    assert result.achieved.macs == pytest.approx(macs) and result.achieved.params == pytest.approx(params)


@pytest.mark.parametrize("name", ["lenet", "resnet20", "resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("budget", [Budget(macs=0.25), Budget(params=0.3)], ids=["macs", "params"])
def test_budget_is_met_within_two_percent(name: str, budget: Budget) -> None:
    _check(name, budget)


def test_macs_and_params_together() -> None:
    _check("lenet", Budget(macs=0.5, params=0.1))


@pytest.mark.slow
@pytest.mark.parametrize("budget", [Budget(macs=0.5), Budget(params=0.6)], ids=["macs", "params"])
def test_vit_b_16_heads_and_mlp_neurons(budget: Budget) -> None:
    _check("vit_b_16", budget)


def test_unreachable_budget_names_the_smallest_reachable_value() -> None:
    model, x = _model("lenet")
    reachable = r"Budget\(macs=0.001\) cannot be met: the smallest reachable is macs=0\.0\d+"
    with pytest.raises(BudgetError, match=reachable):
        shrinkage.prune(model, x, Budget(macs=0.001))


def test_round_to_keeps_widths_at_multiples() -> None:
    model, x = _model("resnet20")
    result = shrinkage.prune(model, x, Budget(macs=0.5), round_to=8)
    assert result.achieved.macs <= 0.5
    widths = [m.out_channels for m in result.compact.modules() if isinstance(m, nn.Conv2d) and m.out_channels > 0]
    assert widths and all(w % 8 == 0 for w in widths), widths


def test_round_to_holds_for_channels_training_already_zeroed() -> None:
    """A regularized run leaves channels at zero that compaction removes whatever the
    selection does: the kept widths are still multiples of ``round_to`` (zero channels
    kept for alignment are exact), and the compact model equals the masked one."""
    model, x = _model("resnet20")
    with torch.no_grad():  # odd counts of dead filters, as a group Lasso leaves them
        model.conv1.weight[:3] = 0
        model.bn1.weight[:3], model.bn1.bias[:3] = 0, 0
        model.layer2[0].conv1.weight[:5] = 0
        model.layer2[0].bn1.weight[:5], model.layer2[0].bn1.bias[:5] = 0, 0
    result = shrinkage.prune(model, x, Budget(macs=0.6), round_to=8)
    widths = [m.out_channels for m in result.compact.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths
    assert result.achieved.macs <= 0.6
    small = assert_compacts_exactly(result.model, x, rtol=1e-4, options=shrinkage.CompactOptions(round_to=8))
    assert [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)] == widths


def test_weak_residual_branch_is_removed_whole_first() -> None:
    """A branch a group Lasso has nearly zeroed costs almost nothing to remove: prune takes
    it whole (depth) before touching any live channel."""
    model, x = _model("resnet20")
    with torch.no_grad():
        for p in model.layer2[1].parameters():
            p.mul_(1e-3)
    dense = count_macs(model, x).total
    branch = count_macs(model, x).per_module["layer2.1"] / dense
    result = shrinkage.prune(model, x, Budget(macs=1 - 0.99 * branch))
    assert any(label.startswith("layer2.1.conv1") for label in result.depth), result.depth
    assert set(result.removed) == {label for label in result.removed if label.startswith("layer2.1.")}


def test_zero_mask_holds_the_removed_groups_while_fine_tuning() -> None:
    model, x = _model("lenet")
    result = shrinkage.prune(model, x, Budget(macs=0.3))
    pruned = result.model.train()
    zeros = {n: (p == 0).clone() for n, p in pruned.named_parameters()}
    mask = result.zero_mask()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(pruned(torch.randn(8, 1, 28, 28)), torch.randint(0, 10, (8,))).backward()
        opt.step()
        mask.apply_()
    still = shrinkage.compact(pruned.eval(), (x,))
    assert count_macs(still, x).total / count_macs(model, x).total <= 0.3
    assert any(z.any() for z in zeros.values())


def test_zero_mask_also_holds_groups_that_were_zero_before_the_selection() -> None:
    """After regularized training the budget may already be met by the zeros training made:
    nothing new is selected, and the mask still holds those groups, so the budget holds
    after fine-tuning whatever the optimizer does (momentum, weight decay, distillation)."""
    model, x = _model("resnet20")
    trained = shrinkage.prune(model, x, Budget(macs=0.8)).model  # stands in for what training zeroed
    with torch.no_grad():  # and a whole residual branch, as SSL depth leaves it
        for p in trained.layer2[1].parameters():
            p.zero_()
    met = count_macs(shrinkage.compact(trained, (x,)), x).total / count_macs(model, x).total
    budget = Budget(macs=met + 1e-6)
    result = shrinkage.prune(trained, x, budget)
    assert not any(result.removed.values()), result.removed  # the budget was met before selecting
    pruned = result.model.train()
    mask = result.zero_mask()
    assert mask.zero_count >= sum(p.numel() for p in trained.layer2[1].parameters())
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(pruned(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))).backward()
        opt.step()
        mask.apply_()
    still = shrinkage.compact(pruned.eval(), (x,))
    assert count_macs(still, x).total / count_macs(model, x).total <= budget.macs


def test_zero_mask_holds_channels_a_regularizer_zeroed_with_their_shifts_left() -> None:
    """A regularizer's coupled and depth groups leave biases and BatchNorm shifts out: the
    weights of a channel go to zero, its shift stays and keeps emitting a constant. Those
    channels are removed already (no consumer reads them) and must be held, or the
    consumers' slices, whose gradient is not zero, grow back while fine-tuning."""
    from shrinkage.groups import CoupledChannels, Depth
    from shrinkage.optim import ModuleType, Regularizer, Rule
    from shrinkage.penalties import GroupLasso

    model, x = _model("resnet20")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(0.1, 0.5)  # positive: the constant passes the ReLU
        reg = Regularizer(model, [Rule(ModuleType((nn.Conv2d,)), CoupledChannels((2, 3, 32, 32)), GroupLasso(1.0))])
        for term in reg.terms:
            matrix = term.grouping.gather()
            matrix[::3] = 0  # a third of every space, as the prox leaves it
            term.grouping.scatter_(matrix)
        (branch,) = Depth().build("layer2.1", model.layer2[1])
        branch.scatter_(torch.zeros(branch.shape))
    assert float(model.layer2[1].bn2.bias.detach().abs().min()) > 0  # the shifts are still there
    met = count_macs(shrinkage.compact(model, (x,)), x).total / count_macs(model, x).total
    assert met < 0.7
    result = shrinkage.prune(model, x, Budget(macs=met + 1e-6))
    assert not any(result.removed.values()), result.removed
    mask = result.zero_mask()
    assert mask.zero_count >= sum(p.numel() for p in branch.parameters)
    pruned = result.model.train()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(pruned(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))).backward()
        opt.step()
        mask.apply_()
    still = shrinkage.compact(pruned.eval(), (x,))
    assert count_macs(still, x).total / count_macs(model, x).total <= met + 1e-6


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"budget": 0.5}, "budget must be a shrinkage.Budget"),
    ({"budget": Budget(macs=0.5), "round_to": 0}, "round_to must be an integer >= 1"),
    ({"budget": Budget(macs=0.5), "min_channels": 2.5}, "min_channels must be an integer >= 1"),
])  # fmt: skip
def test_bad_arguments_give_one_line(kwargs: dict[str, object], match: str) -> None:
    model, x = _model("lenet")
    with pytest.raises(shrinkage.ShrinkageError, match=match) as info:
        shrinkage.prune(model, x, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_latency_budget_is_measured_on_the_compacted_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timing is replaced by a deterministic stand-in (MACs at the budget's batch size),
    so this checks the plumbing, not a wall clock: every probe is measured on the
    compacted model at ``batch_size``, and the result meets the latency target."""
    import importlib

    from shrinkage.metrics.latency import Latency

    seen: list[int] = []

    def fake_latency(model: nn.Module, example: torch.Tensor, **_: object) -> Latency:
        seen.append(example.shape[0])
        return Latency(median_ms=count_macs(model, example).total / 1e6, iqr_ms=0.0, measurements=1, threads=1)

    monkeypatch.setattr(importlib.import_module("shrinkage.budget.prune"), "measure_latency", fake_latency)
    model, x = _model("lenet")
    dense_ms = count_macs(model, torch.zeros(16, 1, 28, 28)).total / 1e6
    result = shrinkage.prune(model, x, Budget(latency_ms=0.3 * dense_ms, batch_size=16))
    assert seen and set(seen) == {16}
    assert result.achieved.latency_ms is not None and result.achieved.latency_ms <= 0.3 * dense_ms
    assert result.achieved.macs <= 0.31


def test_a_mac_budget_is_counted_on_fewest_mac_forms_without_a_clock() -> None:
    """Under the measured default, a MAC budget must not time forms in its bisection: the
    count would depend on the machine's load and each probe would pay for the timing."""
    from shrinkage.compact.choice import Measured, default_policy, set_default_policy

    def timer(modules: object, x: torch.Tensor) -> list[float]:
        raise AssertionError("a MAC budget timed a layer's forms")

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3))
    with torch.no_grad():  # filter-shape columns zeroed in the middle conv: it has several exact forms
        model[2].weight.view(16, -1)[:, ::3] = 0
    previous = set_default_policy(Measured(timer=timer))
    try:
        result = shrinkage.prune(model, torch.randn(1, 3, 12, 12), Budget(macs=0.5))
    finally:
        set_default_policy(previous)
    assert default_policy() is previous
    assert result.achieved.macs <= 0.5
