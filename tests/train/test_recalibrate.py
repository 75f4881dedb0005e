"""BatchNorm statistics re-estimated after selection (``shrinkage.train.recalibrate``)."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from shrinkage.train.recalibrate import recalibrate_batchnorm


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 4, 3), drop=nn.Dropout(p=0.9), bn=nn.BatchNorm2d(4, momentum=0.3), relu=nn.ReLU(),
        flatten=nn.Flatten(), fc=nn.Linear(4 * 6 * 6, 3), bn1=nn.BatchNorm1d(3),
    ))  # fmt: skip


def test_statistics_are_the_average_over_the_batches_with_only_batchnorm_in_train_mode() -> None:
    model = _net().eval()
    with torch.no_grad():
        model.bn.running_mean.fill_(5.0)
        model.bn.running_var.fill_(9.0)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 1, 8, 8, generator=g) + 2 for _ in range(3)]
    before = copy.deepcopy(model.state_dict())
    assert recalibrate_batchnorm(model, batches) == 2
    with torch.no_grad():  # what bn saw: the conv output, dropout off (eval), over all batches
        seen = torch.cat([model.conv(x) for x in batches])
    mean = seen.mean(dim=(0, 2, 3))
    assert torch.allclose(model.bn.running_mean, mean, atol=1e-5)
    # a cumulative average of each batch's unbiased variance
    per_batch = torch.stack([model.conv(x).detach().transpose(0, 1).flatten(1).var(dim=1) for x in batches])
    assert torch.allclose(model.bn.running_var, per_batch.mean(dim=0), atol=1e-4)
    assert int(model.bn.num_batches_tracked) == 3
    for name, value in model.state_dict().items():  # no weight moved
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(value, before[name]), name
    assert not any(m.training for m in model.modules()) and model.bn.momentum == 0.3


def test_modes_are_restored_and_nothing_changes_without_batchnorm_or_batches() -> None:
    model = _net().train()
    state = copy.deepcopy(model.state_dict())
    assert recalibrate_batchnorm(model, []) == 0
    assert all(m.training for m in model.modules())
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    assert recalibrate_batchnorm(plain, [torch.randn(2, 1, 8, 8)]) == 0
    assert recalibrate_batchnorm(model, [torch.randn(16, 1, 8, 8)]) == 2
    assert all(m.training for m in model.modules())


def test_a_failing_forward_restores_modes_and_momenta() -> None:
    model = _net().eval()
    with pytest.raises(RuntimeError):
        recalibrate_batchnorm(model, [torch.randn(2, 3, 8, 8)])  # 3 channels into a 1-channel conv
    assert not any(m.training for m in model.modules()) and model.bn.momentum == 0.3
