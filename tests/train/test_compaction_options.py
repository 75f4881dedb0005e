"""The training pipeline's compaction honours the ``compact:`` block of the config."""

from __future__ import annotations

import torch
from torch import nn

from shrinkage.config.schema import CompactConfig
from shrinkage.train.compaction import compact_model


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3))
    with torch.no_grad():
        model[0].weight[:11] = 0  # five filters survive
        model[0].bias[:11] = 0
    return model


def test_round_to_from_the_config_reaches_compaction() -> None:
    x = torch.randn(2, 3, 10, 10)
    plain = compact_model(_model(), CompactConfig(), x)
    aligned = compact_model(_model(), CompactConfig(round_to=4), x)
    assert plain.model[0].out_channels == 5
    assert aligned.model[0].out_channels == 8
    assert plain.max_abs_diff == 0.0 and aligned.max_abs_diff <= 1e-5
