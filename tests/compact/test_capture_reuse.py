"""One capture of a model, reused by every compaction of it while its weights change."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import shrinkage
from shrinkage.errors import ConfigError
from shrinkage.graph.capture import Capture, capture_channel_graph

from support.exactness import assert_compacts_exactly


def _zero_filters(conv: nn.Conv2d, rows: list[int]) -> None:
    with torch.no_grad():
        conv.weight[rows] = 0


def test_a_reused_capture_sees_weights_changed_in_place() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    graph = capture_channel_graph(model, (x,), Capture.EXPORT)
    for rows in ([0, 3], [0, 3, 5, 9, 11]):  # more zeros each time, as a selection tries them
        _zero_filters(model.layer1[0].conv1, rows)
        _zero_filters(model.layer3[1].conv1, rows)
        reused = assert_compacts_exactly(model, (x,), compact=lambda m, ex: shrinkage.compact(m, ex, graph=graph))
        fresh = shrinkage.compact(model, (x,))
        assert reused.layer1[0].conv1.out_channels == fresh.layer1[0].conv1.out_channels == 64 - len(rows)
        assert sum(p.numel() for p in reused.parameters()) == sum(p.numel() for p in fresh.parameters())


def test_a_capture_of_another_model_is_refused() -> None:
    x = torch.randn(1, 3, 64, 64)
    graph = capture_channel_graph(torchvision.models.resnet18().eval(), (x,), Capture.EXPORT)
    with pytest.raises(ConfigError, match="not a capture of this ResNet"):
        shrinkage.compact(torchvision.models.resnet18().eval(), (x,), graph=graph)
