"""Focus: per-group weights on the group Lasso, and the controller penalizing only the
groups it is going to remove (``ControllerConfig.focus``, :mod:`shrinkage.optim.focus`)."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import pytest
import torch
from torch import nn

from shrinkage.budget import Budget
from shrinkage.errors import ConfigError
from shrinkage.groups import CoupledChannels, Filters, Matrix
from shrinkage.optim import ModuleType, NamePattern, Regularizer, Rule, StructureMacEstimator, attach_controller
from shrinkage.optim.focus import Focus
from shrinkage.penalties import GroupLasso, NuclearNorm
from shrinkage.zoo import resnet20

from .test_budget_controller import CASES, CONFIG, _start, _train, assert_trains_alike, resumed_twin


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 8, 3), relu1=nn.ReLU(), conv2=nn.Conv2d(8, 16, 3), relu2=nn.ReLU(),
        flatten=nn.Flatten(), fc=nn.Linear(16 * 8 * 8, 4),
    ))  # fmt: skip


# ------------------------------------------------------------------ weighted prox and value


def test_group_weights_scale_each_groups_threshold_and_value() -> None:
    torch.manual_seed(0)
    matrix = torch.randn(4, 9, dtype=torch.float64) + 3.0
    penalty = GroupLasso(0.5, scale_by_size=True)
    weights = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    out = matrix.clone()
    penalty.prox_(out, 0.2, weights)
    t = 0.2 * 0.5 * 3.0  # step * strength * sqrt(9)
    for g, w in enumerate(weights.tolist()):
        norm = float(matrix[g].norm())
        assert torch.allclose(out[g], matrix[g] * max(0.0, 1 - t * w / norm)), g
    assert torch.equal(out[1], matrix[1])  # weight 0: untouched
    expected = 0.5 * 3.0 * float((matrix.norm(dim=1) * weights).sum())
    assert float(penalty.value(matrix, weights)) == pytest.approx(expected)


def test_weighted_prox_on_coupled_groups_equals_the_gather_path() -> None:
    """The fast in-place path (row norms, rows scaled) and gather / prox / scatter agree."""
    model = resnet20(in_channels=3)
    regularizer = Regularizer(model, [Rule(ModuleType((nn.Conv2d,)), CoupledChannels((1, 3, 16, 16)), GroupLasso(1.0))])
    term = next(t for t in regularizer.terms if t.grouping.scales_rows_in_place)
    n = term.grouping.shape[0]
    weights = (torch.arange(n) % 3 == 0).double()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert isinstance(term.penalty, GroupLasso)
    with torch.no_grad():
        term.penalty.prox_grouping_(term.grouping, 0.05, weights)
    fast = term.grouping.gather().clone()
    with torch.no_grad():
        for k, v in model.named_parameters():
            v.copy_(start[k])
        matrix = term.grouping.gather()
        term.penalty.prox_(matrix, 0.05, weights)
    assert torch.allclose(fast, matrix, atol=1e-6)
    before = term.grouping.gather()
    unweighted = weights == 0
    assert torch.equal(fast[unweighted], before[unweighted])
    assert not torch.allclose(fast[~unweighted], before[~unweighted])


def test_set_group_weights_names_the_term_on_bad_input() -> None:
    model = _conv_net()
    regularizer = Regularizer(model, [
        Rule(NamePattern("conv1"), Filters(), GroupLasso(0.1)), Rule(NamePattern("conv2"), Matrix(), NuclearNorm(0.1)),
    ])  # fmt: skip
    with pytest.raises(ConfigError, match=r"conv1:filters:group_lasso.*8 finite numbers >= 0"):
        regularizer.set_group_weights(0, torch.ones(7))
    with pytest.raises(ConfigError, match="conv1:filters:group_lasso"):
        regularizer.set_group_weights(0, -torch.ones(8))
    with pytest.raises(ConfigError, match="conv2:matrix:nuclear_norm: group weights need a group_lasso"):
        regularizer.set_group_weights(1, torch.ones(8))
    with pytest.raises(ConfigError, match="no term 5"):
        regularizer.set_group_weights(5, torch.ones(8))
    with pytest.raises(ConfigError, match=r"controller.focus: term conv2:matrix:nuclear_norm"):
        attach_controller(regularizer, model, torch.randn(1, 1, 12, 12), 0.5, dataclasses.replace(CONFIG, focus=True))


# ------------------------------------------------------------------ the choice


def test_focus_chooses_the_fewest_weakest_groups_per_mac_that_reach_the_goal() -> None:
    model = _conv_net()
    regularizer = Regularizer(model, [Rule(NamePattern("conv*"), Filters(), GroupLasso(0.1))])
    example = torch.randn(1, 1, 12, 12)
    estimator = StructureMacEstimator(regularizer, model, (example,))
    focus = Focus(regularizer, estimator, margin=0.1)
    summaries = estimator.summaries()
    unit = estimator.unit_shrink({id(p): 1.0 for p in model.parameters()})
    weights = focus.choose(summaries, unit, budget=0.6)
    goal = 0.6 * 0.9

    def left(chosen: list[torch.Tensor]) -> float:
        return estimator.from_summaries([s.masked_fill(w.bool(), 0.0) for s, w in zip(summaries, chosen, strict=True)])

    assert left(weights) <= goal
    # the fewest: giving back the strongest chosen group (per MAC) misses the goal
    scores = [s / (u * c) for s, u, c in zip(summaries, unit, focus.costs, strict=True)]
    strongest = max(
        ((float(scores[i][g]), i, g) for i, w in enumerate(weights) for g in w.nonzero().flatten().tolist()),
    )
    fewer = [w.clone() for w in weights]
    fewer[strongest[1]][strongest[2]] = 0.0
    assert left(fewer) > goal
    # the weakest: no group left out scores below a chosen one
    chosen_max = strongest[0]
    left_out = min(float(scores[i][~w.bool()].min()) for i, w in enumerate(weights) if bool((~w.bool()).any()))
    assert left_out >= chosen_max
    for i, w in enumerate(weights):
        assert torch.equal(regularizer.group_weights[i], w)


def test_zero_groups_are_always_chosen() -> None:
    model = _conv_net()
    with torch.no_grad():
        model.conv2.weight[3] = 0
        model.conv2.bias[3] = 0
    regularizer = Regularizer(model, [Rule(NamePattern("conv*"), Filters(), GroupLasso(0.1))])
    estimator = StructureMacEstimator(regularizer, model, (torch.randn(1, 1, 12, 12),))
    unit = estimator.unit_shrink({id(p): 1.0 for p in model.parameters()})
    weights = Focus(regularizer, estimator, margin=0.0).choose(estimator.summaries(), unit, budget=0.95)
    assert weights[1][3] == 1.0


# ------------------------------------------------------------------ in training


def test_focus_leaves_the_kept_groups_larger_than_a_penalty_on_every_group() -> None:
    """What focus is for: the groups a budget keeps are not shrunk along with those it
    removes. Same model, data and budget; the kept coupled channels end larger."""
    kept_norm = {}
    for focus in (False, True):
        run = _start("coupled", CASES["coupled"].nominal, config=dataclasses.replace(CONFIG, focus=focus))
        _train(run, 300)
        norms = torch.cat([t.grouping.gather().detach().norm(dim=1) for t in run.regularizer.terms])
        kept_norm[focus] = float(norms[norms > 0].mean())
    assert kept_norm[True] > 1.2 * kept_norm[False], kept_norm


def test_focus_state_survives_the_checkpoint_encoding() -> None:
    run, twin = resumed_twin("coupled", 120, dataclasses.replace(CONFIG, focus=True))
    assert len(run.regularizer.group_weights) == len(run.regularizer.terms)  # chosen, and in the state
    for i, w in run.regularizer.group_weights.items():
        assert torch.equal(twin.regularizer.group_weights[i], w)
    shares = [r.regularizer.controller.stats()["penalized_groups"] for r in (run, twin) if r.regularizer.controller]
    assert len(shares) == 2 and 0 < shares[0] == shares[1] < 1  # read back from the regularizer's weights
    assert_trains_alike(run, twin, 50)


def test_a_budget_object_and_focus_attach() -> None:
    model = _conv_net()
    regularizer = Regularizer(model, [Rule(NamePattern("conv*"), Filters(), GroupLasso(0.1))])
    controller = attach_controller(
        regularizer, model, torch.randn(1, 1, 12, 12), Budget(macs=0.5), dataclasses.replace(CONFIG, focus=True), 100
    )
    assert controller.focus is not None and controller.stats()["penalized_groups"] == 1.0  # nothing chosen yet
