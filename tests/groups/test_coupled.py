"""Coupled groups: one group per removable channel, spanning every layer it touches."""

from __future__ import annotations

import torch
from torch import nn

from shrinkage.groups import CoupledChannels
from shrinkage.optim import ModuleType, ProximalOptimizer, Regularizer, Rule
from shrinkage.penalties import GroupLasso
from shrinkage.zoo import LeNet, resnet20

from support.exactness import assert_compacts_exactly
from support.sparsity import randomize_norm_stats


def test_lenet_groups_join_filter_and_every_consumer_slice_and_the_bias_on_request() -> None:
    model = LeNet()
    fc1_columns = model.fc1.weight[:, 7 * 16 : 8 * 16].t().flatten()
    for kind, expected in (
        # filter (500) + fc1 columns (16 positions of the flattened 4x4 map, 500 rows each)
        (CoupledChannels((1, 1, 28, 28)), [model.conv2.weight[7].flatten(), fc1_columns]),
        # and the filter's bias (1)
        (
            CoupledChannels((1, 1, 28, 28), include_shifts=True),
            [model.conv2.weight[7].flatten(), model.conv2.bias[7:8], fc1_columns],
        ),
    ):
        reg = Regularizer(model, [Rule(ModuleType((nn.Conv2d,)), kind, GroupLasso(1.0))])
        by_label = {t.grouping.label: t.grouping for t in reg.terms}
        assert set(by_label) == {"conv1", "conv2"}
        with torch.no_grad():
            matrix = by_label["conv2"].gather()
        assert matrix.shape == (50, sum(e.numel() for e in expected))
        assert torch.equal(matrix[7], torch.cat(expected))


def test_resnet_groups_leave_out_batchnorm_shifts_and_keep_its_scales() -> None:
    model = resnet20(in_channels=3)
    reg = Regularizer(model, [Rule(ModuleType((nn.Conv2d,)), CoupledChannels((2, 3, 16, 16)), GroupLasso(1.0))])
    members = {id(p) for t in reg.terms for p in t.grouping.parameters}
    assert id(model.layer1[0].bn1.weight) in members and id(model.bn1.weight) in members
    assert not any(id(m.bias) in members for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_residual_space_is_one_group_across_blocks_and_compacts_exactly() -> None:
    torch.manual_seed(0)
    model = resnet20(in_channels=3).eval()
    randomize_norm_stats(model, torch.Generator().manual_seed(0))
    reg = Regularizer(model, [Rule(ModuleType((nn.Conv2d,)), CoupledChannels((2, 3, 16, 16)), GroupLasso(1.0))])
    labels = [t.grouping.label for t in reg.terms]
    stage1 = next(label for label in labels if "layer1.0.conv2" in label)
    # the stem and every block's last conv of stage 1 write into the same residual channels
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= set(stage1.split("+"))

    term = next(t for t in reg.terms if t.grouping.label == stage1)
    with torch.no_grad():  # zero channels 3 and 9 of the stage-1 residual stream, as a prox would
        matrix = term.grouping.gather()
        matrix[[3, 9]] = 0
        term.grouping.scatter_(matrix)
    small = assert_compacts_exactly(model, torch.randn(2, 3, 16, 16))
    assert small.conv1.out_channels == 14 and small.layer1[2].conv2.out_channels == 14


def test_proximal_training_zeroes_whole_coupled_structures() -> None:
    torch.manual_seed(0)
    model = LeNet()
    reg = Regularizer(model, [Rule(ModuleType((nn.Conv2d,)), CoupledChannels((1, 1, 28, 28)), GroupLasso(4.0))])
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), reg)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    zero = model.conv2.weight.flatten(1).abs().amax(1) == 0
    assert zero.any()
    assert bool((model.fc1.weight.view(500, 50, 16)[:, zero] == 0).all())  # the bias's constant: read by nobody
    small = assert_compacts_exactly(model.eval(), x)
    assert small.conv2.out_channels == max(1, int((~zero).sum()))
