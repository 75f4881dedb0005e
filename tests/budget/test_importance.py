"""Damage estimates that order prune()'s candidates.

The Taylor estimate is checked against the loss itself (a finite difference of the loss
along each coupled group, so every slice a group holds is included once and only once),
and against what it is for: across layers of different widths, removing the channels
it ranks low must hurt the loss less than removing those group norms rank low.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shrinkage
from shrinkage import Budget
from shrinkage.budget import GroupNorm, Taylor
from shrinkage.budget.candidates import Unit, find_units
from shrinkage.errors import ConfigError
from shrinkage.graph.capture import capture_channel_graph
from shrinkage.metrics import count_macs

from support.exactness import assert_compacts_exactly


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )  # fmt: skip
    with torch.no_grad():  # BatchNorm statistics away from identity, so its slices matter
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.double().eval()


def _units(model: nn.Module, x: torch.Tensor) -> list[Unit]:
    graph = capture_channel_graph(model, (x,))
    return find_units(model, graph, count_macs(model, (x,)).per_module)


def _batch(seed: int, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)


@torch.no_grad()
def _loss_with_group_scaled(model: nn.Module, unit: Unit, group: int, factor: float,
                            batch: tuple[torch.Tensor, torch.Tensor]) -> float:  # fmt: skip
    saved = unit.grouping.gather().clone()
    matrix = saved.clone()
    matrix[group] *= factor
    unit.grouping.scatter_(matrix)
    loss = float(F.cross_entropy(model(batch[0]), batch[1]))
    unit.grouping.scatter_(saved)
    return loss


def test_taylor_is_the_squared_derivative_of_the_loss_along_each_group() -> None:
    model = _convnet()
    batch = _batch(1)
    units = _units(model, batch[0][:1])
    assert len(units) == 2  # the two conv outputs, each coupled with its BatchNorm and consumer
    damage = Taylor([batch]).of_groups(model, units)
    eps = 1e-5
    for unit, got in zip(units, damage, strict=True):
        for g in range(unit.size):
            # d/da L(group * a) at a = 1 is sum(w * dL/dw) over the group's slices
            slope = (_loss_with_group_scaled(model, unit, g, 1 + eps, batch)
                     - _loss_with_group_scaled(model, unit, g, 1 - eps, batch)) / (2 * eps)  # fmt: skip
            assert float(got[g]) == pytest.approx(slope**2, rel=1e-4, abs=1e-12), (unit.label, g)
    assert all(p.grad is None for p in model.parameters()), "gradients were left on the model"


def test_taylor_averages_over_batches_and_stops_at_max_batches() -> None:
    model = _convnet()
    batches = [_batch(s) for s in range(3)]
    units = _units(model, batches[0][0][:1])
    each = [Taylor([b]).of_groups(model, units) for b in batches]
    two = Taylor(batches, max_batches=2).of_groups(model, units)
    for u in range(len(units)):
        torch.testing.assert_close(two[u], (each[0][u] + each[1][u]) / 2)


def test_zero_groups_score_zero_and_a_custom_loss_is_used() -> None:
    model = _convnet()
    x, _ = _batch(2)
    with torch.no_grad():
        model[0].weight[2] = 0
        model[0].bias[2] = 0
        model[1].weight[2] = 0
        model[1].bias[2] = 0
        model[3].weight[:, 2] = 0
    units = _units(model, x[:1])
    calls = []

    def loss(m: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        calls.append(1)
        return m(batch[0]).pow(2).mean()  # no labels: a regression-style objective

    damage = Taylor([(x,)], loss=loss).of_groups(model, units)
    assert calls == [1]
    first = next(i for i, u in enumerate(units) if u.size == 6)
    assert float(damage[first][2]) == 0.0 and bool((damage[first] > 0).sum() == 5)


def test_taylor_keeps_the_narrow_layer_that_group_norms_give_away() -> None:
    """A 4-wide layer whose every channel carries the signal, then a 32-wide layer where
    most channels are noise. Per MAC saved, a channel of the narrow layer looks 8x
    cheaper to group norms (each scores about 1 in its own layer); the loss says it is
    not. Taylor's selection must lose less."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 3)).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 16, generator=g, dtype=torch.float64)
    y = (x[:, :3].argmax(1)).long()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    budget = Budget(macs=0.6)
    losses = {}
    for importance in (GroupNorm(), Taylor([(x, y)])):
        result = shrinkage.prune(model, x[:1], budget, depth=False, importance=importance)
        assert result.achieved.macs <= 0.6
        assert_compacts_exactly(result.model, x[:1])
        with torch.no_grad():
            losses[type(importance).__name__] = float(F.cross_entropy(result.model(x), y))
    assert losses["Taylor"] < losses["GroupNorm"], losses


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Taylor([], max_batches=0), "max_batches must be an integer >= 1"),
        (lambda: Taylor([]).of_groups(_convnet(), []), "calibration batches are empty"),
        (lambda: Taylor([_batch(0)], loss=lambda m, b: m(b[0])).of_groups(_convnet(), []), "scalar tensor"),
        (lambda: shrinkage.prune(_convnet(), _batch(0)[0][:1], Budget(macs=0.5), importance="taylor"),
         "importance must be a shrinkage.budget.importance.Importance"),
    ],
)  # fmt: skip
def test_bad_arguments_give_one_line(make: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()  # type: ignore[operator]
