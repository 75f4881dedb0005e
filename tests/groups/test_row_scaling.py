"""The group Lasso prox on coupled groups without building their matrix (row norms from
per-slice squared norms, rows scaled in place) against the gather / prox / scatter path."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from shrinkage.groups import (
    AxisGrouping,
    ColumnGrouping,
    CoupledChannels,
    Filters,
    FlatGrouping,
    SliceGrouping,
)
from shrinkage.groups.base import Grouping
from shrinkage.optim import ModuleType, Regularizer, Rule
from shrinkage.penalties import GroupLasso
from shrinkage.zoo import LeNet, resnet20


class ResidualNet(nn.Module):
    """Conv + BatchNorm stem, one residual block and a Linear behind a flatten (4x4 inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.head(torch.flatten(torch.relu(x + y), 1))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "lenet": (LeNet, (1, 1, 28, 28)),
    "resnet20": (lambda: resnet20(in_channels=3), (1, 3, 16, 16)),
    "residual": (ResidualNet, (1, 3, 4, 4)),
}


def _model(name: str) -> tuple[nn.Module, Regularizer]:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build()
    with torch.no_grad():  # BatchNorm scales of 1 and shifts of 0 would make those slices alike
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_()
                m.bias.normal_()
    return model, Regularizer(model, [Rule(ModuleType((nn.Conv2d,)), CoupledChannels(shape), GroupLasso(1.0))])


@torch.no_grad()
def _slow_prox_(penalty: GroupLasso, grouping: Grouping, step: float) -> None:
    """What the regularizer did for every term before the fast path."""
    matrix = grouping.gather()
    penalty.prox_(matrix, step)
    grouping.scatter_(matrix)


def _params(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _restore(model: nn.Module, state: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for k, v in model.named_parameters():
            v.copy_(state[k])


def _step_between_norms(grouping: Grouping, penalty: GroupLasso) -> float:
    """A step whose threshold lies halfway between two neighbouring group norms, at the widest
    gap of the middle half: about half the groups become zero, and no norm is within rounding
    of the threshold (where the two paths' summation orders could decide differently)."""
    with torch.no_grad():
        norms = grouping.gather().norm(dim=1)
    live = norms[norms > 0].sort().values
    lo, hi = len(live) // 4, max(3 * len(live) // 4, len(live) // 4 + 1)
    j = lo + int((live[lo + 1 : hi + 1] - live[lo:hi]).argmax())
    t = float(live[j] + live[j + 1]) / 2
    weight = grouping.shape[1] ** 0.5 if penalty.scale_by_size else 1.0
    return t / (penalty.strength * weight)


def _assert_close(fast: dict[str, Tensor], slow: dict[str, Tensor], before: dict[str, Tensor]) -> None:
    """Equal up to ``1e-6`` of the largest weight before the prox: the norms differ by rounding
    (summed in another order), and a factor ``1 - t/norm`` near zero magnifies that relative
    error, but never beyond ``|w| * eps * t/norm`` in absolute terms."""
    for k, expected in slow.items():
        scale = float(before[k].abs().max()) or 1.0
        torch.testing.assert_close(fast[k], expected, rtol=0, atol=1e-6 * scale, msg=lambda m, k=k: f"{k}: {m}")
        # exact zeros on one path are exact zeros on the other
        assert torch.equal(fast[k] == 0, expected == 0), k


def test_coupled_groupings_offer_row_scaling_and_others_do_not() -> None:
    for name in MODELS:
        _, reg = _model(name)
        assert reg.terms and all(t.grouping.scales_rows_in_place for t in reg.terms), name
    model = LeNet()
    reg = Regularizer(model, [Rule(ModuleType((nn.Conv2d,)), Filters(), GroupLasso(1.0))])
    assert not any(t.grouping.scales_rows_in_place for t in reg.terms)


@pytest.mark.parametrize("name", list(MODELS))
def test_row_norms_and_shape_match_the_gathered_matrix(name: str) -> None:
    _, reg = _model(name)
    for term in reg.terms:
        with torch.no_grad():
            matrix = term.grouping.gather()
        assert term.grouping.shape == tuple(matrix.shape)
        torch.testing.assert_close(term.grouping.row_norms(), matrix.norm(dim=1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("scale_by_size", [False, True])
@pytest.mark.parametrize("name", list(MODELS))
def test_fast_prox_equals_gather_prox_scatter_per_term(name: str, scale_by_size: bool) -> None:
    model, reg = _model(name)
    penalty = GroupLasso(0.5, scale_by_size=scale_by_size)
    start = _params(model)
    shared = 0
    for term in reg.terms:
        shared += len(term.grouping.parameters) >= 2
        with torch.no_grad():  # a group that is zero already stays zero on both paths
            matrix = term.grouping.gather()
            matrix[1] = 0
            term.grouping.scatter_(matrix)
        before = _params(model)
        step = _step_between_norms(term.grouping, penalty)

        _slow_prox_(penalty, term.grouping, step)
        slow = _params(model)
        with torch.no_grad():
            slow_zero = term.grouping.gather().abs().amax(dim=1) == 0
        _restore(model, before)
        penalty.prox_grouping_(term.grouping, step)
        fast = _params(model)
        with torch.no_grad():
            fast_zero = term.grouping.gather().abs().amax(dim=1) == 0

        _assert_close(fast, slow, before)
        assert torch.equal(fast_zero, slow_zero)
        assert bool(slow_zero[1]) and 1 < int(slow_zero.sum()) < len(slow_zero)  # some, not all, became zero
        _restore(model, start)
    assert shared  # groups spanning several tensors were among them


@pytest.mark.parametrize("name", list(MODELS))
def test_regularizer_prox_takes_the_fast_path_and_matches(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, reg = _model(name)
    lrs = {id(p): 0.02 for p in model.parameters()}
    start = _params(model)
    for term in reg.terms:  # the slow path, term after term (consecutive terms share tensors)
        _slow_prox_(term.penalty, term.grouping, reg.step_for(term, lrs))
    slow = _params(model)
    _restore(model, start)

    def refuse(*_args: object) -> None:
        raise AssertionError("the coupled group Lasso prox built the matrix")

    monkeypatch.setattr(SliceGrouping, "gather", refuse)
    monkeypatch.setattr(SliceGrouping, "scatter_", refuse)
    reg.prox_(lrs)
    _assert_close(_params(model), slow, start)


def test_zero_threshold_leaves_every_weight_unchanged() -> None:
    model, reg = _model("residual")
    before = _params(model)
    for term in reg.terms:
        GroupLasso(0.0).prox_grouping_(term.grouping, 1.0)
    after = _params(model)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_other_groupings_keep_the_gather_prox_scatter_path() -> None:
    torch.manual_seed(0)
    model = LeNet()
    reg = Regularizer(model, [Rule(ModuleType((nn.Conv2d,)), Filters(), GroupLasso(1.0))])
    start = _params(model)
    for term in reg.terms:
        _slow_prox_(term.penalty, term.grouping, 0.05)
    slow = _params(model)
    _restore(model, start)
    for term in reg.terms:
        term.penalty.prox_grouping_(term.grouping, 0.05)
    after = _params(model)
    assert all(torch.equal(after[k], slow[k]) for k in slow)


# ----------------------------------------------------------------- hand-made members


def _p(*shape: int, seed: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)))


def _check_against_matrix(grouping: SliceGrouping, factors: Tensor) -> None:
    with torch.no_grad():
        matrix = grouping.gather()
    torch.testing.assert_close(grouping.row_norms(), matrix.norm(dim=1), rtol=1e-6, atol=0)
    params = grouping.parameters
    start = [p.detach().clone() for p in params]
    with torch.no_grad():
        grouping.scatter_(matrix * factors.unsqueeze(1))
    slow = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, start, strict=True):
            p.copy_(s)
    grouping.scale_rows_(factors)
    for p, s in zip(params, slow, strict=True):
        assert torch.equal(p.detach(), s)


def test_one_tensor_in_several_members_partial_slices_and_negative_dims() -> None:
    w, b, fc = _p(6, 3, 2, 2, seed=1), _p(6, seed=2), _p(5, 24, seed=3)
    members = (
        (w, 0, torch.tensor([[0], [2], [4]])),  # even filters only: odd ones belong to no group
        (w, -4, torch.tensor([[1], [3], [5]])),  # the same tensor again, other positions, a negative dim
        (b, 0, torch.tensor([[0], [2], [4]])),
        (fc, 1, torch.arange(24).view(3, 8)),  # several columns per group
        (fc, 1, torch.tensor([[0], [8], [16]])),  # columns already in the member above: counted twice
    )
    grouping = SliceGrouping("hand", members)
    assert grouping.scales_rows_in_place
    _check_against_matrix(grouping, torch.tensor([0.5, 0.0, 1.0]))


def test_positions_in_two_groups_fall_back_to_gather_and_scatter() -> None:
    w = _p(4, 3, seed=4)
    overlapping = SliceGrouping("overlap", ((w, 0, torch.tensor([[0], [1]])), (w, 0, torch.tensor([[1], [2]]))))
    two_axes = SliceGrouping("axes", ((w, 0, torch.tensor([[0], [1], [2]])), (w, 1, torch.tensor([[0], [1], [2]]))))
    for grouping in (overlapping, two_axes):
        assert not grouping.scales_rows_in_place
        n = grouping.shape[0]
        _check_against_matrix(grouping, torch.linspace(0, 1, n))


def test_other_groupings_row_norms_and_scaling_go_through_the_matrix() -> None:
    w, v = _p(4, 3, 2, 2, seed=5), _p(5, seed=6)
    for grouping in (AxisGrouping("a", w, 1), ColumnGrouping("c", w), FlatGrouping("f", (w, v))):
        assert not grouping.scales_rows_in_place
        n = grouping.shape[0]
        with torch.no_grad():
            matrix = grouping.gather().clone()
        torch.testing.assert_close(grouping.row_norms(), matrix.norm(dim=1), rtol=0, atol=0)
        factors = torch.linspace(0.2, 1, n)
        grouping.scale_rows_(factors)
        with torch.no_grad():
            assert torch.equal(grouping.gather(), matrix * factors.unsqueeze(1))
