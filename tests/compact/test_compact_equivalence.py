"""Central test: compacted output == original output, with fewer parameters."""

from __future__ import annotations

import copy
import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

import shrinkage
from shrinkage.compact import LoweredConv2d, SelectInputs, plan_compaction
from shrinkage.zoo import MLP, ConvNet, LeNet, resnet20

from support.exactness import assert_compacts_exactly
from support.sparsity import randomize_norm_stats, zero_random_structures


def vgg_style() -> nn.Module:
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 16, 3, padding=1), bn1=nn.BatchNorm2d(16), relu1=nn.ReLU(),
        conv2=nn.Conv2d(16, 16, 3, padding=1), bn2=nn.BatchNorm2d(16), relu2=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv3=nn.Conv2d(16, 32, 3), bn3=nn.BatchNorm2d(32), relu3=nn.ReLU(), pool2=nn.AvgPool2d(2),
        flatten=nn.Flatten(), fc1=nn.Linear(32 * 3 * 3, 64), relu4=nn.ReLU(), drop=nn.Dropout(),
        fc2=nn.Linear(64, 10),
    ))  # fmt: skip


MODELS = {
    "lenet": (lambda: LeNet(), (1, 28)),
    "mlp": (lambda: MLP(), (1, 28)),
    "convnet": (lambda: ConvNet(), (1, 28)),
    "vgg": (vgg_style, (3, 16)),
    "resnet20": (lambda: resnet20(in_channels=3), (3, 16)),
}


def _guaranteed_removal(model: nn.Module) -> None:
    """One structure any correct compaction must remove: a hidden unit no consumer reads."""
    with torch.no_grad():
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        if len(linears) >= 2:
            linears[-1].weight[:, 0] = 0
        else:  # resnet: the first block's inner channel 0 (read only by that block's conv2)
            convs[2].weight[:, 0] = 0


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("seed", range(6))
def test_random_patterns_give_equal_outputs_and_fewer_parameters(name: str, seed: int) -> None:
    build, (channels, size) = MODELS[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build().eval()
    randomize_norm_stats(model, gen)
    zero_random_structures(model, gen, fraction=0.3)
    _guaranteed_removal(model)
    x = torch.randn(4, channels, size, size, generator=gen)
    before = copy.deepcopy(model.state_dict())

    assert_compacts_exactly(model, x, seed=seed)  # on inputs the plan never saw
    for key, value in model.state_dict().items():  # the input model is untouched
        assert torch.equal(value, before[key]), key


def test_dead_filters_with_bias_fold_into_linear_consumer() -> None:
    model = LeNet().eval()
    with torch.no_grad():
        model.conv2.weight[[3, 7, 11]] = 0  # bias stays: the channels emit relu(bias) constants
        model.conv2.bias[[3, 7, 11]] = torch.tensor([0.5, -0.2, 1.0])
    small = assert_compacts_exactly(model, torch.randn(3, 1, 28, 28))
    assert small.conv2.out_channels == 47
    assert small.fc1.in_features == 47 * 16


def test_dead_channel_before_padded_conv_is_kept_unless_its_constant_is_zero() -> None:
    model = ConvNet().eval()
    with torch.no_grad():
        model.conv1.weight[[0, 1]] = 0
        model.bn1.running_mean.zero_()
        model.bn1.bias[0] = 1.0  # relu(1.0) = 1 at every pixel: a padded conv2 sees a border pattern
        model.bn1.bias[1] = -1.0  # relu(-1.0) = 0: removable
    small = assert_compacts_exactly(model, torch.randn(2, 1, 28, 28))
    assert small.conv1.out_channels == 31


def test_zero_batchnorm_scale_makes_a_channel_dead() -> None:
    model = ConvNet().eval()
    with torch.no_grad():
        model.bn3.weight[[2, 5]] = 0  # bn3 feeds avgpool -> fc: constant folds into fc.bias
    small = assert_compacts_exactly(model, torch.randn(2, 1, 28, 28))
    assert small.conv3.out_channels == 126 and small.fc.in_features == 126


def test_mlp_unused_input_pixels_are_selected_away() -> None:
    model = MLP().eval()
    with torch.no_grad():
        model.fc1.weight[:, :600] = 0
    small = assert_compacts_exactly(model, torch.randn(2, 1, 28, 28))
    assert isinstance(small.fc1.select, SelectInputs)
    assert small.fc1.layer.in_features == 184


def test_shape_sparse_conv_is_lowered_to_a_smaller_gemm() -> None:
    model = LeNet().eval()
    with torch.no_grad():
        cols = model.conv2.weight.view(50, -1)
        cols[:, torch.randperm(500)[:400]] = 0
    small = assert_compacts_exactly(model, torch.randn(2, 1, 28, 28))
    assert isinstance(small.conv2, LoweredConv2d)
    assert small.conv2.weight.shape == (50, 100)


def test_residual_add_removes_channels_only_when_every_branch_agrees() -> None:
    model = resnet20(in_channels=3).eval()
    with torch.no_grad():
        # stage 1 residual stream channel 4: the stem and both convs writing into it are zero,
        # but only in two of the three blocks, so it must stay
        model.conv1.weight[4] = 0
        model.layer1[0].conv2.weight[4] = 0
        model.layer1[1].conv2.weight[4] = 0
    plan = plan_compaction(model, (torch.randn(2, 3, 16, 16),))
    assert ("conv1", 0) not in plan.keep or bool(plan.keep[("conv1", 0)][4])
    # channel 4 stays (the third block still writes into it), so nothing may be removed
    assert_compacts_exactly(model, torch.randn(2, 3, 16, 16), fewer_params=False)


def test_plan_is_json_serializable() -> None:
    model = LeNet().eval()
    with torch.no_grad():
        model.conv1.weight[[0, 1]] = 0
        model.conv1.bias[[0, 1]] = 0
    plan = plan_compaction(model, (torch.randn(1, 1, 28, 28),))
    data = json.loads(json.dumps(plan.to_dict()))
    assert len(data["modules"]["conv1"]["keep_dim0"]) == 18
    assert len(data["modules"]["conv2"]["keep_dim1"]) == 18


class _SharedLayer(nn.Module):
    """One conv registered under two names, as weight-sharing code sometimes does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.alias = self.conv
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)))


@pytest.mark.parametrize("build", [lambda: resnet20(in_channels=3), _SharedLayer], ids=["resnet20", "aliased"])
def test_compacted_model_shares_nothing_with_the_original(build) -> None:
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        first.weight[:2] = 0
        if first.bias is not None:
            first.bias[:2] = 0
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    small = shrinkage.compact(model, (x,))
    original = {id(t) for t in list(model.parameters()) + list(model.buffers())}
    assert not original & {id(t) for t in list(small.parameters()) + list(small.buffers())}
    assert not {id(m) for m in model.modules()} & {id(m) for m in small.modules()}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
