"""A MAC budget of some layers only (``Budget(macs=..., macs_of=(nn.Conv2d,))``), as the SSL
paper reports LeNet's conv MACs: counting, selection, factorization, configs and the CLI."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import shrinkage
from shrinkage.budget import Budget
from shrinkage.cli.main import parse_budget
from shrinkage.config import TargetConfig
from shrinkage.errors import ConfigError
from shrinkage.metrics import count_macs
from shrinkage.train.compress import default_out_dir
from shrinkage.zoo.lenet import LeNet

X = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
CONV = Budget(macs=0.1, macs_of=nn.Conv2d)


def _lenet() -> nn.Module:
    torch.manual_seed(0)
    return LeNet().eval()


def test_counting_the_named_layers_only() -> None:
    model = _lenet()
    full = count_macs(model, X)
    scoped = count_macs(model, X, ["conv1", "conv2"])
    assert scoped.total == full.per_module["conv1"] + full.per_module["conv2"] == full.per_operator["aten.convolution"]
    assert scoped.per_module == {"": scoped.total, "conv1": full.per_module["conv1"], "conv2": full.per_module["conv2"]}
    assert scoped.per_operator == {"aten.convolution": scoped.total}
    assert count_macs(model, X, ["conv2", "conv2.nothing", "gone"]).total == full.per_module["conv2"]
    assert count_macs(model, X, [""]).total == full.total  # the root holds everything


def test_a_layer_replaced_by_factorization_still_counts_under_its_name() -> None:
    model = _lenet()
    factorized = shrinkage.factorize(model, {"conv2": 0.5}, layers=["conv2"])
    inner = count_macs(factorized, X).per_module
    parts = [name for name in inner if name.startswith("conv2.")]
    assert parts and count_macs(factorized, X, ["conv2"]).total == sum(inner[p] for p in parts)


def test_the_budget_resolves_its_types_on_the_dense_model_and_pins_the_names() -> None:
    model = _lenet()
    assert CONV.mac_layers(model) == {"conv1", "conv2"}
    pinned = CONV.pinned_to(model)
    assert pinned.macs_in == {"conv1", "conv2"} and pinned.mac_layers(nn.Linear(2, 2)) == {"conv1", "conv2"}
    assert str(CONV) == "Budget(macs=0.1, macs_of=Conv2d)"
    nested = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3)), nn.Conv2d(2, 2, 3))
    assert Budget(macs=0.5, macs_of=(nn.Sequential,)).mac_layers(nested) == {""}  # the root holds the others


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"params": 0.5, "macs_of": nn.Conv2d}, "macs_of needs a macs target"),
        ({"macs": 0.5, "macs_of": ()}, "non-empty tuple of nn.Module classes"),
        ({"macs": 0.5, "macs_of": (int,)}, "non-empty tuple of nn.Module classes"),
        ({"macs": 0.5, "macs_in": frozenset()}, "non-empty set of module names"),
    ],
)
def test_bad_scopes_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Budget(**kwargs)


def test_a_scope_the_model_lacks_names_the_type_and_the_model() -> None:
    with pytest.raises(ConfigError, match=r"budget macs_of=Conv1d: LeNet has no such module"):
        shrinkage.prune(_lenet(), (X,), Budget(macs=0.5, macs_of=nn.Conv1d))


def test_prune_meets_a_conv_mac_budget_and_leaves_what_costs_no_conv_mac() -> None:
    model = _lenet()
    result = shrinkage.prune(model, (X,), CONV)
    dense = count_macs(model, X, ["conv1", "conv2"]).total
    compact = result.compact
    assert count_macs(compact, X, ["conv1", "conv2"]).total / dense == pytest.approx(result.achieved.macs)
    assert 0.09 <= result.achieved.macs <= 0.1  # within 1% of the conv MACs, under the budget
    assert compact.fc1.out_features == model.fc1.out_features  # fc1's own neurons cost no conv MAC
    assert count_macs(compact, X).total / count_macs(model, X).total > 0.1  # the fully connected MACs stay
    fresh = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(compact(fresh), result.model(fresh), rtol=1e-4, atol=1e-5)
    assert result.summary()["macs_of"] == "Conv2d"


def test_factorize_under_a_conv_mac_budget_factorizes_convolutions_only() -> None:
    model = _lenet()
    small = shrinkage.factorize(model, budget=Budget(macs=0.5, macs_of=nn.Conv2d), example_inputs=X)
    dense = count_macs(model, X, ["conv1", "conv2"]).total
    assert count_macs(small, X, ["conv1", "conv2"]).total <= 0.5 * dense
    assert isinstance(small.fc1, nn.Linear) and small.fc1.weight.shape == model.fc1.weight.shape


def test_target_config_and_cli_name_the_scope() -> None:
    target = TargetConfig(macs=0.1, macs_of=("Conv2d",))
    assert target.budget() == CONV
    assert TargetConfig.of_budget(CONV).macs_of == ("Conv2d",)
    with pytest.raises(ConfigError, match=r"macs_of: unknown layer type 'Conv' \(known: Conv1d, Conv2d"):
        TargetConfig(macs=0.1, macs_of=("Conv",))
    with pytest.raises(ConfigError, match=r"macs_of: needs macs"):
        TargetConfig(params=0.1, macs_of=("Conv2d",))
    assert parse_budget(["macs=0.1", "macs_of=Conv2d"]) == CONV
    assert parse_budget(["macs=0.1", "macs_of=Conv2d,Linear"]).macs_of == (nn.Conv2d, nn.Linear)
    with pytest.raises(ConfigError, match=r"--target macs_of=conv: unknown layer type 'conv'"):
        parse_budget(["macs=0.1", "macs_of=conv"])
    assert default_out_dir("runs/lenet", CONV).name == "lenet-macs0.1-of-Conv2d"
