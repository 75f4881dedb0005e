"""Channel shuffle (view into groups, transpose, view back): followed exactly, channels
it permutes kept, the layers around it still compacted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import shrinkage
from shrinkage.compact import CompactOptions
from shrinkage.errors import UnsupportedModuleError
from shrinkage.graph import build_channel_graph, default_rules
from shrinkage.graph.capture import Capture

from support.exactness import assert_compacts_exactly


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class _Shuffled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Conv2d(3, 10, 1)
        self.expand = nn.Conv2d(10, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_shuffle(self.expand(torch.relu(self.hidden(x))), 2))


def test_shuffled_channels_are_kept_and_the_hidden_ones_removed() -> None:
    torch.manual_seed(0)
    model = _Shuffled().eval()
    with torch.no_grad():
        model.hidden.weight[[2, 5, 7]] = 0
        model.hidden.bias[[2, 5, 7]] = 0
        model.expand.weight[[1, 6]] = 0  # zero filters *before* the shuffle: a smaller shuffle would reorder
    small = assert_compacts_exactly(model, torch.randn(2, 3, 6, 6))
    assert small.hidden.out_channels == 7
    assert small.expand.out_channels == 8


def test_the_axis_after_a_shuffle_lists_the_channels_in_shuffled_order() -> None:
    graph = build_channel_graph(_Shuffled(), (torch.randn(1, 3, 4, 4),), default_rules())
    head = next(n for n in graph.gm.graph.nodes if n.target == "head")
    axis = graph.axes[head.args[0].name]
    order = [c for seg in axis.segments for c in range(seg.start, seg.stop)]
    assert order == [0, 4, 1, 5, 2, 6, 3, 7]  # view (2, 4), transpose to (4, 2), flatten
    assert axis.grid is None


class _SplitThenAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n, c, h, w = y.shape
        return y.view(n, 2, c // 2, h, w).sum(dim=1)  # folds channel groups together


def test_other_ops_on_a_split_channel_axis_are_reported_by_fx() -> None:
    with pytest.raises(UnsupportedModuleError, match="sum on a channel axis split over two dims"):
        shrinkage.compact(_SplitThenAdd(), (torch.randn(1, 3, 4, 4),), CompactOptions(capture=Capture.FX))


def test_other_ops_on_a_split_channel_axis_keep_its_channels_under_export() -> None:
    model = _SplitThenAdd().eval()
    with torch.no_grad():
        model.conv.weight[1] = 0  # folded together with channel 5: it must stay
    small = assert_compacts_exactly(model, torch.randn(1, 3, 4, 4), fewer_params=False)
    assert small.conv.out_channels == 8
