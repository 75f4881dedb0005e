"""The extension point: one LayerType per module type, registered once, used by both captures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import shrinkage
from shrinkage.compact import layer_types
from shrinkage.compact.surgery import sliced_copy
from shrinkage.graph import rules as fx_rules

from support.exactness import assert_compacts_exactly


class Dense(nn.Module):
    """A user's own layer: a linear map that is not an ``nn.Linear``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.in_features, self.out_features = n_in, n_out
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.bias = nn.Parameter(torch.randn(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


def shrink_dense(m: nn.Module, keep: dict[int, Tensor]) -> nn.Module:
    rows = keep[0].nonzero().flatten() if 0 in keep else torch.arange(m.out_features)
    cols = keep[1].nonzero().flatten() if 1 in keep else torch.arange(m.in_features)
    tensors = {"weight": m.weight.detach()[rows][:, cols], "bias": m.bias.detach()[rows]}
    return sliced_copy(m, tensors, in_features=len(cols), out_features=len(rows))


DENSE = shrinkage.LayerType((Dense,), shrink_dense, shrinkage.WeightUse.LINEAR, fx_rule=fx_rules.linear)


@pytest.fixture
def registered() -> Iterator[None]:
    shrinkage.register_layer_type(DENSE)
    try:
        yield
    finally:
        layer_types._REGISTRY.pop(Dense)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(Dense(5, 8), nn.ReLU(), Dense(8, 3)).eval()
    with torch.no_grad():
        model[0].weight[[1, 6]] = 0  # dead neurons: constant relu(bias), folded into the next layer
        model[2].weight[:, 3] = 0  # an unread neuron
    return model


def test_an_unregistered_layer_keeps_its_channels() -> None:
    small = shrinkage.compact(_model(), (torch.randn(4, 5),))
    assert small[0].out_features == 8


@pytest.mark.parametrize("capture", [shrinkage.Capture.EXPORT, shrinkage.Capture.FX], ids=["export", "fx"])
def test_a_registered_layer_shrinks_under_either_capture(registered: None, capture: shrinkage.Capture) -> None:
    options = shrinkage.CompactOptions(capture=capture)
    small = assert_compacts_exactly(_model(), torch.randn(4, 5), options=options)
    assert type(small[0]) is Dense and small[0].weight.shape == (5, 5) and small[2].in_features == 5


def test_every_registered_type_has_its_surgery_and_a_weight_use() -> None:
    for cls, layer_type in layer_types.registered_layer_types():
        assert callable(layer_type.shrink) and isinstance(layer_type.weight_use, shrinkage.WeightUse), cls
        assert layer_types.layer_type_of(cls.__new__(cls)) is layer_type
