"""How often the torch.fx capture and compact() run the model, and what they record meanwhile.

The capture records every node's value in one run of the graph; an op that says it works
in place (a ReLU after a BatchNorm) gets its input copied just before it runs, so no second
recording is needed; an in-place op that does not say so is caught by the version counters
and the graph is recorded again. compact() compares its result with the model outputs the
capture already computed to check its trace."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import shrinkage
from shrinkage.compact import CompactOptions
from shrinkage.graph import builder
from shrinkage.graph.capture import Capture, capture_channel_graph

from support.exactness import assert_compacts_exactly


class _Block(nn.Module):
    def __init__(self, through_view: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.through_view = through_view
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor):  # a run on values (torch.fx traces with proxies)
            self.calls += 1
        h = self.bn(self.conv1(x))
        if self.through_view:  # h changes in place without being the op's input: not foreseen
            flat = h.flatten(1)
            flat.relu_()
            return self.conv2(flat.view(x.shape[0], 8, x.shape[2], x.shape[3]))
        return self.conv2(self.relu(h))


def _zeroed(through_view: bool) -> _Block:
    torch.manual_seed(0)
    model = _Block(through_view).eval()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.bias.normal_()
        model.conv1.weight[[1, 5]] = 0
        model.conv1.bias[[1, 5]] = 0
        model.bn.weight[[1, 5]] = 0
        model.bn.bias[[1, 5]] = 0
    return model


@pytest.mark.parametrize("through_view", [False, True], ids=["its-input", "through-a-view"])
def test_values_before_an_in_place_op_are_what_its_readers_saw(
    through_view: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _zeroed(through_view)
    runs: list[Any] = []
    record = builder._record
    monkeypatch.setattr(builder, "_record", lambda *a: runs.append(a) or record(*a))
    x = torch.randn(2, 3, 6, 6)
    cg = capture_channel_graph(model, (x,), Capture.FX)
    assert len(runs) == (2 if through_view else 1)  # recorded again only when not foreseen
    bn = next(n for n in cg.gm.graph.nodes if n.target == "bn")
    with torch.no_grad():
        expected = model.bn(model.conv1(x))
    assert (expected < 0).any()  # the ReLU will change it
    torch.testing.assert_close(cg.values[bn.name], expected)  # the value before the ReLU, negatives kept


@pytest.mark.parametrize("through_view", [False, True], ids=["its-input", "through-a-view"])
def test_compact_runs_the_model_once_and_is_exact(through_view: bool) -> None:
    model = _zeroed(through_view)
    x = torch.randn(2, 3, 6, 6)
    options = CompactOptions(capture=Capture.FX)
    model.calls = 0
    small = shrinkage.compact(model, (x,), options)
    assert model.calls == 1  # the capture's check of its trace; compact reuses those outputs
    if through_view:  # flattened with the positions, the channels stay: nothing to remove, still exact
        fresh = torch.randn(3, 3, 6, 6)
        torch.testing.assert_close(small(fresh), model(fresh))
    else:
        assert small.conv1.out_channels == 6
        assert_compacts_exactly(model, (x,), compact=lambda m, ex: shrinkage.compact(m, ex, options))
