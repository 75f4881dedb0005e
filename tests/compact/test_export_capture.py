"""Capture with torch.export: ATen-level rules, in-place ops, zero products, layer subclasses,
Hugging Face models, and the fallback between captures."""

from __future__ import annotations

import pytest
import torch
from support.exactness import assert_compacts_exactly
from torch import nn

import shrinkage
from shrinkage.compact import CompactOptions
from shrinkage.compact.api import plan_compaction
from shrinkage.errors import ExampleInputError, UnsupportedModuleError
from shrinkage.graph import capture as capture_module
from shrinkage.graph.capture import Capture

EXPORT = CompactOptions(capture=Capture.EXPORT)


class InPlaceAdd(nn.Module):
    """``h.add_(...)`` without rebinding ``h``: the later read must see the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h.add_(self.fc2(x))
        return self.fc3(torch.relu(h))


def test_an_in_place_add_that_is_not_rebound_is_followed() -> None:
    torch.manual_seed(0)
    model = InPlaceAdd().eval()
    with torch.no_grad():  # channel 0 and 1: dead in both branches, constant after the add
        model.fc1.weight[:2] = 0
        model.fc2.weight[:2] = 0
        model.fc3.weight[:, 5] = 0  # channel 5: unread
    small = assert_compacts_exactly(model, torch.randn(4, 6), options=EXPORT)
    assert small.fc3.in_features == 5


class SqueezeExcite(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, c, 1)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.reduce, self.gate = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)
        self.project = nn.Conv2d(c, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.dw(torch.relu(self.expand(x))))
        s = torch.sigmoid(self.gate(torch.relu(self.reduce(h.mean((2, 3), keepdim=True)))))
        return self.project(h * s)


def test_a_zero_channel_leaves_through_a_gate_whose_layers_are_not_zero() -> None:
    torch.manual_seed(0)
    model = SqueezeExcite().eval()
    with torch.no_grad():  # channels 1 and 4 of the expansion are exactly zero; the SE layers are untouched
        for c in (1, 4):
            model.expand.weight[c] = 0
            model.expand.bias[c] = 0
            model.dw.bias[c] = 0
    small = assert_compacts_exactly(model, torch.randn(2, 3, 9, 9), options=EXPORT)
    assert small.expand.out_channels == 6 and small.gate.out_channels == 6 and small.reduce.in_channels == 6


class GateWrittenWithNone(SqueezeExcite):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.expand(x))
        w = torch.sigmoid(self.gate(torch.relu(self.reduce(h.mean((2, 3), keepdim=True))))).flatten(1)
        return self.project(h * w[:, :, None, None])


def test_a_gate_indexed_with_none_is_supported() -> None:
    torch.manual_seed(0)
    model = GateWrittenWithNone().eval()
    with torch.no_grad():
        model.expand.weight[2] = 0
        model.expand.bias[2] = 0
    small = assert_compacts_exactly(model, torch.randn(2, 3, 7, 7), options=EXPORT)
    assert small.expand.out_channels == 7 and small.gate.out_channels == 7


def test_a_conv1d_model_on_channel_first_sequences() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.ReLU(), nn.Conv1d(8, 2, 1)).eval()
    with torch.no_grad():
        model[2].weight[:, 3] = 0
    small = assert_compacts_exactly(model, torch.randn(2, 4, 10), options=EXPORT)
    assert small[0].out_channels == 7


def test_a_batch_norm_subclass_keeps_its_type_and_its_extra_behaviour() -> None:
    class BatchNormReLU(nn.BatchNorm2d):  # like timm's BatchNormAct2d
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(super().forward(x))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), BatchNormReLU(6), nn.Conv2d(6, 2, 1)).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].bias.uniform_(-1, 1)
        model[2].weight[:, :2] = 0
    small = assert_compacts_exactly(model, torch.randn(2, 3, 8, 8), options=EXPORT)
    assert type(small[1]) is BatchNormReLU and small[1].num_features == 4


def test_the_plan_records_the_capture() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert plan_compaction(model, (torch.randn(2, 4),)).capture is Capture.EXPORT

    class WithAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj, self.attn = nn.Linear(4, 8), nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.proj(x)
            return self.attn(h, h, h)[0]

    assert plan_compaction(WithAttention(), (torch.randn(2, 3, 4),)).capture is Capture.FX  # heads need the module


def test_a_model_export_cannot_capture_falls_back_to_fx(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise UnsupportedModuleError("cannot export Sequential with torch.export: for this test")

    monkeypatch.setattr(capture_module, "build_export_graph", refuse)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert plan_compaction(model, (torch.randn(2, 4),)).capture is Capture.FX


class Spectral(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(self.fc(x), dim=-1).abs()


def test_an_op_without_rule_is_refused_naming_it_and_its_node() -> None:
    with pytest.raises(UnsupportedModuleError, match=r"aten\.fft_rfft at graph node 'fft_rfft'"):
        plan_compaction(Spectral(), (torch.randn(2, 4),), EXPORT)


def _mlp_with_dead_neurons() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight[:2] = 0  # two dead neurons: BatchNorm turns them into constants, folded into model[3]
        model[1].running_mean.uniform_(-1, 1)
        model[1].bias.uniform_(0.5, 1)
    return model


def test_a_forward_hook_is_refused_naming_the_hooked_module() -> None:
    model = _mlp_with_dead_neurons().eval()
    model[2].register_forward_hook(lambda module, args, out: out * 2)
    with pytest.raises(UnsupportedModuleError, match=r"module '2' has forward hooks"):
        shrinkage.compact(model, (torch.randn(3, 4),))


def test_a_model_in_train_mode_must_also_match_in_train_mode() -> None:
    model = _mlp_with_dead_neurons().train()
    # in train mode BatchNorm normalizes a constant channel to its shift, not to the folded eval constant
    with pytest.raises(UnsupportedModuleError, match="not in train mode"):
        shrinkage.compact(model, (torch.randn(8, 4),))
    assert model.training and model[1].num_batches_tracked == 0  # left as found
    small = shrinkage.compact(model.eval(), (torch.randn(8, 4),))
    assert small[3].in_features == 4


def test_unread_channels_leave_a_model_in_train_mode_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).train()
    with torch.no_grad():
        model[3].weight[:, :2] = 0  # unread: nothing is folded, train mode matches too
    small = shrinkage.compact(model, (torch.randn(8, 4),))
    assert small.training and small[0].out_features == 4


class DeadThroughPadding(nn.Module):
    """A dead channel (constant bias) through an op that pads: a border pattern, not a constant."""

    def __init__(self, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.spread = nn.AvgPool2d(3, 1, padding=1) if pool else nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.spread(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("pool", [False, True], ids=["depthwise", "avg-pool"])
@pytest.mark.parametrize("capture", [Capture.EXPORT, Capture.FX], ids=["export", "fx"])
def test_a_dead_channel_through_padding_stays_unless_it_is_zero(pool: bool, capture: Capture) -> None:
    torch.manual_seed(0)
    model = DeadThroughPadding(pool).eval()
    with torch.no_grad():
        model.conv.weight[1] = 0
        model.conv.bias[1] = 0.7
        model.conv.weight[2] = 0
        model.conv.bias[2] = 0  # exactly zero: stays zero through padding, so it goes
    options = CompactOptions(capture=capture)
    fresh = [(torch.randn(2, 3, 10, 10),), (torch.randn(1, 3, 4, 6),)]
    small = assert_compacts_exactly(model, (torch.randn(2, 3, 7, 7),), options=options, fresh=fresh)
    assert small.conv.out_channels == 3


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (torch.randn(2, 4, 8, 8), "expected input.* to have 3 channels"),
        (torch.randn(2, 3, 9, 9), "shapes cannot be multiplied"),
        (torch.randn(2, 3, 8, 8, dtype=torch.float64), "should be the same"),
    ],
    ids=["channels", "spatial-size", "dtype"],
)
def test_a_wrong_example_input_names_the_node_where_it_fails(x: torch.Tensor, message: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 2)).eval()
    expected = rf"the example inputs fail at graph node '\w+' \(.*\): .*{message}"
    with pytest.raises(ExampleInputError, match=expected) as err:
        shrinkage.compact(model, (x,))
    assert "\n" not in str(err.value)
