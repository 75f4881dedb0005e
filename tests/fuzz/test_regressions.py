"""One hand-written model per cause the random-architecture fuzzer found in the fx capture."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import shrinkage
from shrinkage.errors import UnsupportedModuleError

from support.exactness import assert_compacts_exactly
from support.random_models import compact_options

FX = compact_options("fx")  # the torch.fx capture, where these causes were found


def _zero_rows(*layers: nn.Module, rows: list[int]) -> None:
    with torch.no_grad():
        for layer in layers:
            layer.weight[rows] = 0


def _randomize_bn(*bns: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in bns:
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=gen))


class InPlaceNotRebound(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        h.add_(self.fc2(x))  # the graph still names h; the value is h + fc2(x)
        return self.fc3(torch.relu(h))


def test_in_place_add_whose_result_is_not_rebound_is_exact() -> None:
    model = InPlaceNotRebound().eval()
    _zero_rows(model.fc1, rows=[1, 2])
    with torch.no_grad():
        model.fc1.bias[[1, 2]] = -1.0  # fc1 alone would make these channels dead (zero after the ReLU)...
        model.fc2.weight[[1, 2]] = 1.0  # ...but fc2 lifts them above zero on most inputs
        model.fc2.bias[[1, 2]] = 0.0
        model.fc3.weight[:, 6] = 0  # nobody reads channel 6 of the sum: it goes from fc1 and fc2
    example = (0.01 * torch.randn(4, 6),)  # on the example the sum stays negative: zero after the ReLU
    small = assert_compacts_exactly(model, example, options=FX)
    assert small.fc1.out_features == small.fc2.out_features == small.fc3.in_features == 7


class InPlaceReluAfterRead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.left, self.right = nn.Linear(8, 4), nn.Linear(8, 4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x)).mean((2, 3))
        a = self.left(y)  # reads y before the ReLU below overwrites it
        return a + self.right(self.relu(y))


def test_in_place_relu_after_another_reader_folds_the_value_that_reader_saw() -> None:
    model = InPlaceReluAfterRead().eval()
    _randomize_bn(model.bn)
    with torch.no_grad():
        model.bn.bias[:4] = -torch.rand(4) - 0.5  # dead channels: negative before the ReLU
    _zero_rows(model.conv, rows=[0, 1, 2, 3])
    small = assert_compacts_exactly(model, (torch.randn(2, 3, 5, 5),), options=FX)
    assert small.conv.out_channels == 4


class InPlaceThroughView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        h.chunk(2, dim=1)[0].relu_()  # changes h through a view of it
        return self.fc(h.mean((2, 3)))


def test_in_place_op_on_a_view_read_again_later_is_refused_naming_the_op() -> None:
    with pytest.raises(UnsupportedModuleError, match=r"in-place tensor method \.relu_\(\)"):
        shrinkage.compact(InPlaceThroughView().eval(), (torch.randn(2, 3, 5, 5),), FX)


class AugmentedAssignment(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        t = h
        t += self.fc2(x)  # changes h in eager mode; fx records an out-of-place add
        return self.fc3(h)


def test_trace_that_loses_an_augmented_assignment_is_refused() -> None:
    with pytest.raises(UnsupportedModuleError, match="trace of AugmentedAssignment"):
        shrinkage.compact(AugmentedAssignment().eval(), (torch.randn(2, 6),), FX)


class LiteralSplit(nn.Module):
    def __init__(self, chunked: bool) -> None:
        super().__init__()
        self.chunked = chunked
        self.conv, self.fc, self.out = nn.Conv2d(3, 8, 1), nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        a, b = h.chunk(2, dim=1) if self.chunked else torch.split(h, [3, 5], dim=1)
        return self.out(self.fc(torch.cat([b, a], 1).mean((2, 3))))


@pytest.mark.parametrize("chunked", [False, True])
def test_split_with_fixed_sizes_keeps_the_split_channels(chunked: bool) -> None:
    model = LiteralSplit(chunked).eval()
    _zero_rows(model.conv, rows=[0, 1])  # with fewer channels the split would cut elsewhere
    _zero_rows(model.fc, rows=[2])
    small = assert_compacts_exactly(model, (torch.randn(2, 3, 6, 6),), options=FX)
    assert small.conv.out_channels == 8 and small.fc.out_features == 5


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(6, 8)
        self.shared = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.shared(self.a(x)) + self.shared(self.b(x)))


def test_module_called_twice_shrinks_consistently() -> None:
    model = CalledTwice().eval()
    _zero_rows(model.shared, rows=[2, 5])  # the same filters at both calls
    _zero_rows(model.a, rows=[1])  # read by the shared layer's second call through b: stays
    small = assert_compacts_exactly(model, (torch.randn(4, 6),), options=FX)
    assert small.shared.out_features == small.out.in_features == 6
    assert small.shared.in_features == 8


class PoolOnFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.pool, self.fc2, self.fc3 = nn.Linear(5, 8), nn.MaxPool1d(2), nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.fc2(self.pool(self.fc1(x))))  # MaxPool1d on (N, F) pools the features


def test_pooling_a_two_dim_input_keeps_the_pooled_channels() -> None:
    model = PoolOnFeatures().eval()
    _zero_rows(model.fc1, rows=[0, 3])
    _zero_rows(model.fc2, rows=[1])
    small = assert_compacts_exactly(model, (torch.randn(3, 5),), options=FX)
    assert small.fc1.out_features == 8 and small.fc2.out_features == 5


class FlattenIntoConv1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(5, 2)
        self.conv1d = nn.Conv1d(4 * 6, 5, 3, padding=1)  # channels times rows of the 6x6 image

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv1d(self.conv(x).flatten(1, 2)).mean(2))


def test_flatten_of_channels_and_rows_into_a_conv1d_is_exact() -> None:
    model = FlattenIntoConv1d().eval()
    _zero_rows(model.conv, rows=[1])  # a dead channel (bias only) spread over 6 conv1d inputs
    _zero_rows(model.conv1d, rows=[2])
    assert_compacts_exactly(model, (torch.randn(2, 3, 6, 6),), options=FX)


class SameChannelTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.padded, self.fc = nn.Conv2d(8, 5, 3, padding=1), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.fc(self.padded(torch.cat([self.bn(y), y], 1)).mean((2, 3)))


def test_one_channel_read_twice_by_a_padded_conv_is_exact() -> None:
    model = SameChannelTwice().eval()
    _randomize_bn(model.bn)
    _zero_rows(model.conv, rows=[1])  # dead: zero after the conv, a non-zero constant after the BN
    with torch.no_grad():
        model.conv.bias[1] = 0.0
    _zero_rows(model.padded, rows=[0])
    assert_compacts_exactly(model, (torch.randn(2, 3, 6, 6),), options=FX)


class DoubleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


def test_float64_model_stays_float64_and_exact() -> None:
    model = DoubleNet().eval()
    _randomize_bn(model.bn)
    with torch.no_grad():
        model.bn.weight[[2, 4]] = 0
    model.double()
    small = assert_compacts_exactly(model, (torch.randn(2, 3, 7, 7, dtype=torch.float64),), options=FX)
    assert small.bn.num_features == 4 and small.bn.running_mean.dtype == torch.float64


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.squeeze, self.excite = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4), nn.Linear(4, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        w = torch.sigmoid(self.excite(self.squeeze(h.mean((2, 3)).relu())))
        return self.fc((h * w[:, :, None, None]).mean((2, 3)))


def test_squeeze_excitation_gate_indexed_with_none_is_exact() -> None:
    model = SqueezeExcite().eval()
    with torch.no_grad():
        model.fc.weight[:, [1, 6]] = 0
        model.squeeze.weight[:, [1, 6]] = 0
    small = assert_compacts_exactly(model, (torch.randn(2, 3, 6, 6),), options=FX)
    assert small.conv.out_channels == 6


class Signal(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.fc = nn.Conv1d(4, 8, 3), nn.Conv1d(8, 6, 3), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.conv2(self.conv1(x).relu()).mean(2))


def test_conv1d_model_on_a_three_dim_input_is_compacted() -> None:
    model = Signal().eval()
    _zero_rows(model.conv1, rows=[0, 5])
    with torch.no_grad():
        model.conv1.bias[[0, 5]] = 0
    small = assert_compacts_exactly(model, (torch.randn(2, 4, 12),), options=FX)
    assert small.conv1.out_channels == 6


class DeadThroughPaddedDepthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.depthwise = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.depthwise(self.conv(x)).mean((2, 3)))


def test_dead_channel_through_a_padded_depthwise_conv_at_another_size() -> None:
    model = DeadThroughPaddedDepthwise().eval()
    _zero_rows(model.conv, rows=[1])  # emits its bias: constant on the 7x7 example, a border pattern after padding
    bigger = (torch.randn(2, 3, 10, 10),)
    # the channel is not constant, so it stays (its mean depends on the image size)
    assert_compacts_exactly(model, (torch.randn(2, 3, 7, 7),), options=FX, fresh=[bigger], fewer_params=False)


class DepthwiseWithZeroTaps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.depthwise = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.fc = nn.Linear(4 * 9, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.depthwise(self.conv(x)).flatten(1))


def test_depthwise_conv_that_loses_channels_and_has_zero_taps() -> None:
    model = DepthwiseWithZeroTaps().eval()
    with torch.no_grad():
        model.fc.weight.view(2, 4, 9)[:, 1:] = 0  # channels 1..3 unread: the depthwise conv keeps one
        model.depthwise.weight[0, :, 0, :] = 0  # a zero row of taps: the conv has several forms
    assert_compacts_exactly(model, (torch.randn(2, 3, 5, 5),), options=FX)
