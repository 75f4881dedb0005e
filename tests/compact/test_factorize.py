"""Low-rank factorization: exact at full rank, Eckart-Young error at rank r."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import shrinkage
from shrinkage.compact import max_output_difference, plan_factorization, rank_for_energy
from shrinkage.errors import ConfigError
from shrinkage.zoo import LeNet


def test_full_energy_full_rank_leaves_outputs_unchanged() -> None:
    model = LeNet().eval()
    x = torch.randn(3, 1, 28, 28)
    f = shrinkage.factorize(model, 1.0, only_if_cheaper=False)
    assert isinstance(f.conv2, nn.Sequential) and isinstance(f.fc1, nn.Sequential)
    with torch.no_grad():
        assert (f(x) - model(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("layer", ["conv", "linear"])
@pytest.mark.parametrize("energy", [0.3, 0.6, 0.9])
def test_weight_error_is_the_eckart_young_value(layer: str, energy: float) -> None:
    torch.manual_seed(0)
    m = nn.Conv2d(6, 12, 3) if layer == "conv" else nn.Linear(20, 12)
    model = nn.Sequential(m)
    f = shrinkage.factorize(model, energy, only_if_cheaper=False)
    first, second = f[0].project, f[0].expand
    w = m.weight.detach().reshape(12, -1).double()
    s = torch.linalg.svdvals(w)
    r = rank_for_energy(s, energy)
    assert first.weight.shape[0] == r
    approx = (second.weight.reshape(12, r).double() @ first.weight.reshape(r, -1).double())
    err = torch.linalg.matrix_norm(w - approx).item()
    assert math.isclose(err, math.sqrt(float((s[r:] ** 2).sum())), rel_tol=1e-4, abs_tol=1e-6)
    kept = float((s[:r] ** 2).sum() / (s**2).sum())
    assert kept >= energy and (r == 1 or float((s[: r - 1] ** 2).sum() / (s**2).sum()) < energy)


def test_replaces_only_where_macs_drop() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.Linear(100, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(100, 3) @ torch.randn(3, 100))  # rank 3
    rows = {r.name: r for r in plan_factorization(model, 0.99)}
    assert rows["0"].rank == 3 and rows["0"].replaced
    assert not rows["1"].replaced  # 4 x 100 at any rank >= 1 is no cheaper as a pair
    f = shrinkage.factorize(model, 0.99)
    assert isinstance(f[0], nn.Sequential) and isinstance(f[1], nn.Linear)
    x = torch.randn(5, 100)
    with torch.no_grad():
        assert (f(x) - model(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("energy", [0.0, -0.5, 1.5, float("nan")])
def test_energy_outside_unit_interval_is_rejected(energy: float) -> None:
    with pytest.raises(ConfigError, match="energy"):
        shrinkage.factorize(LeNet(), energy)


def test_input_model_is_untouched() -> None:
    model = LeNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shrinkage.factorize(model, 0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.fc1, nn.Linear)


def test_layers_filter_limits_factorization_to_matching_names() -> None:
    model = LeNet()
    f = shrinkage.factorize(model, 0.5, layers=["conv*", "fc1"])
    assert isinstance(f.conv1, nn.Sequential) and isinstance(f.conv2, nn.Sequential) and isinstance(f.fc1, nn.Sequential)
    assert isinstance(f.fc2, nn.Linear)
    # a pattern also reaches layers inside a compaction wrapper of that name
    wrapped = nn.Sequential(nn.Linear(50, 50))
    outer = nn.Sequential()
    outer.add_module("fc1", wrapped)
    assert [r.name for r in plan_factorization(outer, 0.5, layers=["fc1"])] == ["fc1.0"]


def test_vit_factorizes_around_attention_and_removed_branches() -> None:
    """nn.MultiheadAttention reads out_proj.weight itself: that layer is left alone; the
    projections of a HeadPrunedAttention and the MLPs factor; zero-width layers are skipped."""
    tv = pytest.importorskip("torchvision.models.vision_transformer")
    torch.manual_seed(0)
    model = tv.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64).eval()
    x = torch.randn(2, 3, 32, 32)
    dense = shrinkage.factorize(model, 1.0, only_if_cheaper=False)
    assert isinstance(dense.encoder.layers[0].self_attention.out_proj, nn.Linear)
    assert max_output_difference(model, dense, (x,)) < 1e-4
    with torch.no_grad():
        model.encoder.layers[1].mlp[3].weight.zero_()
        model.encoder.layers[0].self_attention.out_proj.weight[:, :8] = 0
    small = shrinkage.compact(model, (x,))
    lowrank = shrinkage.factorize(small, 1.0, only_if_cheaper=False)
    assert isinstance(lowrank.encoder.layers[0].self_attention.q_proj, nn.Sequential)
    assert lowrank.encoder.layers[1].mlp[0].out_features == 0
    assert max_output_difference(small, lowrank, (x,)) < 1e-4
