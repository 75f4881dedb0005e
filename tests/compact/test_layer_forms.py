"""Exact forms of compacted layers: each form equals the layer, the choice is by MACs or
by (injected) timings and is recorded, widths round up, every form saves and loads."""

from __future__ import annotations

import itertools
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

import shrinkage
from shrinkage.compact import (
    ByMacs,
    CompactOptions,
    FormChoice,
    FormContext,
    FormPolicy,
    LayerForm,
    Measured,
    form_choices,
    max_output_difference,
    plan_compaction,
    register_form,
)
from shrinkage.compact.choice import Candidate, CandidateCost
from shrinkage.compact.forms import FORMS, forms_for
from shrinkage.compact.timing import clear_timing_cache
from shrinkage.errors import ConfigError, ShrinkageError
from shrinkage.layers import CroppedConv2d, LoweredConv2d, SelectInputs
from shrinkage.metrics import count_macs
from shrinkage.zoo import MLP

from support.exactness import assert_compacts_exactly

CONV_FORMS = ["plain", "selected-inputs", "cropped-kernel", "lowered-gemm"]


@dataclass(frozen=True)
class Prefer(FormPolicy):
    """Picks the named form when it is a candidate (the first candidate otherwise)."""

    form: str
    label: ClassVar[str] = "preferred in a test"

    def choose(self, layer: str, candidates: Sequence[Candidate], x: torch.Tensor, device: torch.device) -> FormChoice:
        pick = next((c for c in candidates if c.form == self.form), candidates[0])
        costs = tuple(CandidateCost(c.form, c.macs, None) for c in candidates)
        return FormChoice(layer, pick.form, self.label, tuple(x.shape), costs)


def _zero_pattern(conv: nn.Conv2d, pattern: str, gen: torch.Generator) -> None:
    """``asymmetric``: input channel 1, the kernel's top row and two right columns, and a
    third of the other columns are zero; ``ring``: only the kernel's border ring."""
    with torch.no_grad():
        w = conv.weight
        if pattern == "ring":
            w[:, :, [0, -1], :] = 0
            w[:, :, :, [0, -1]] = 0
            return
        w[:, 1] = 0
        w[:, :, 0, :] = 0
        w[:, :, :, -2:] = 0
        cols = w.view(w.shape[0], -1)
        cols[:, torch.randperm(cols.shape[1], generator=gen)[: cols.shape[1] // 3]] = 0


def _conv_model(stride: int, dilation: int, padding: int, pattern: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(4, 6, 5, stride=stride, padding=padding, dilation=dilation), relu=nn.ReLU(),
        head=nn.Conv2d(6, 3, 1),
    )).eval()  # fmt: skip
    _zero_pattern(model.conv, pattern, torch.Generator().manual_seed(seed))
    return model


def assert_compacts(
    model: nn.Module, x: torch.Tensor, options: CompactOptions | None = None, *, resize: bool = True
) -> nn.Module:
    """Compact ``model`` on ``x``; the result must equal it on fresh inputs (another batch
    size and, with ``resize``, another odd spatial size) and have no more parameters or MACs."""
    gen = torch.Generator().manual_seed(99)
    shapes = [(5, *x.shape[1:])] + ([(2, x.shape[1], x.shape[2] + 3, x.shape[3] + 2)] if resize else [])
    fresh = [(torch.randn(shape, generator=gen),) for shape in shapes]
    small = assert_compacts_exactly(model, x, fresh=fresh, options=options, fewer_params=False)
    assert count_macs(small, (x,)).total <= count_macs(model, (x,)).total
    return small


CONFIGS = list(itertools.product([1, 2], [1, 2], [0, 1, 2]))  # stride, dilation, padding


@pytest.mark.parametrize("pattern", ["asymmetric", "ring"])
@pytest.mark.parametrize(("stride", "dilation", "padding"), CONFIGS)
def test_every_conv_form_equals_the_conv(stride: int, dilation: int, padding: int, pattern: str) -> None:
    conv = _conv_model(stride, dilation, padding, pattern).conv
    built = {f.label: f.build(conv, FormContext("conv")) for f in forms_for(conv)}
    expected = {"plain", "cropped-kernel", "lowered-gemm"} | ({"selected-inputs"} if pattern == "asymmetric" else set())
    assert {label for label, m in built.items() if m is not None} == expected
    gen = torch.Generator().manual_seed(stride * 10 + dilation)
    for shape in ((3, 4, 13, 13), (2, 4, 16, 15), (1, 4, 14, 17)):
        x = torch.randn(shape, generator=gen)
        with torch.no_grad():
            reference = conv(x)
            for label, m in built.items():
                if m is not None:
                    got = m(x)
                    assert got.shape == reference.shape, (label, shape)
                    assert (got - reference).abs().max() <= 1e-5, (label, shape)


def test_cropped_kernel_keeps_only_the_used_block_and_pads_asymmetrically_only_when_needed() -> None:
    ring = CroppedConv2d.from_conv(_conv_model(1, 1, 2, "ring").conv, (1, 4), (1, 4))
    assert ring.kernel_size == (3, 3) and ring.pads(13, 13) == (1, 1, 1, 1)  # 5x5 pad 2 -> 3x3 pad 1
    side = CroppedConv2d.from_conv(_conv_model(1, 1, 0, "asymmetric").conv, (1, 5), (0, 3))
    assert side.kernel_size == (4, 3) and side.pads(13, 13) == (-1, 0, 0, -2)  # crops the input instead
    built = dict(zip(CONV_FORMS, (f.build(_conv_model(2, 1, 1, "asymmetric").conv, FormContext("c"))
                                  for f in FORMS[nn.Conv2d]), strict=True))  # fmt: skip
    assert isinstance(built["cropped-kernel"].layer, CroppedConv2d)  # over the kept channels
    assert built["cropped-kernel"].layer.in_channels == 3


@pytest.mark.parametrize("form", CONV_FORMS)
@pytest.mark.parametrize(("stride", "dilation", "padding"), [(2, 2, 1), (1, 1, 2)])
def test_compact_builds_the_chosen_form_exactly(form: str, stride: int, dilation: int, padding: int) -> None:
    model = _conv_model(stride, dilation, padding, "asymmetric")
    small = assert_compacts(model, torch.randn(4, 4, 13, 13), CompactOptions(choose_by=Prefer(form)))
    kinds = {"plain": nn.Conv2d, "selected-inputs": nn.Sequential, "cropped-kernel": nn.Sequential,
             "lowered-gemm": LoweredConv2d}  # fmt: skip
    assert type(small.conv) is kinds[form]
    choice = form_choices(small)["conv"]
    assert choice.chosen == form and choice.by == Prefer.label
    assert {c.form for c in choice.candidates} == set(CONV_FORMS)
    if form != "plain":
        x = torch.randn(2, 4, 13, 13)
        assert count_macs(small, (x,)).total < count_macs(model, (x,)).total
    if form in ("selected-inputs", "cropped-kernel"):
        assert isinstance(small.conv.select, SelectInputs) and small.conv.select.index.tolist() == [0, 2, 3]


@pytest.mark.parametrize(("pattern", "expected"), [("asymmetric", "lowered-gemm"), ("ring", "cropped-kernel")])
def test_by_macs_picks_the_fewest_macs_and_ties_go_to_the_simplest(pattern: str, expected: str) -> None:
    model = _conv_model(1, 1, 1, pattern)
    plan = plan_compaction(model, (torch.randn(2, 4, 13, 13),), CompactOptions(choose_by=ByMacs()))
    choice = plan.forms["conv"]
    macs = {c.form: c.macs for c in choice.candidates}
    assert choice.chosen == expected and choice.by == ByMacs.label
    assert macs[expected] == min(macs.values())
    if pattern == "ring":  # the GEMM over the kept columns costs the same: the simpler crop wins
        assert macs["lowered-gemm"] == macs["cropped-kernel"]
    assert all(c.seconds is None for c in choice.candidates)
    assert json.loads(json.dumps(plan.to_dict()))["modules"]["conv"]["form"]["chosen"] == expected


def test_measured_choice_uses_the_timer_and_caches_its_results() -> None:
    clear_timing_cache()
    calls: list[int] = []

    def timer(modules: Sequence[nn.Module], x: torch.Tensor) -> list[float]:
        calls.append(len(modules))
        # a fake machine on which the plain conv is fastest and the GEMM slowest
        return [{nn.Conv2d: 1.0, nn.Sequential: 2.0, LoweredConv2d: 3.0}[type(m)] for m in modules]

    model = _conv_model(2, 1, 1, "asymmetric")
    options = CompactOptions(choose_by=Measured(timer=timer))
    small = assert_compacts(model, torch.randn(4, 4, 13, 13), options)
    assert type(small.conv) is nn.Conv2d and small.conv.in_channels == 4
    choice = form_choices(small)["conv"]
    assert choice.chosen == "plain" and choice.by == "measured"
    assert {c.form: c.seconds for c in choice.candidates}["lowered-gemm"] == 3.0
    assert calls == [4]
    shrinkage.compact(model, (torch.randn(4, 4, 13, 13),), options)
    assert calls == [4]  # same layers, shapes and timer: every time came from the cache


def test_measured_choice_with_the_real_timer_picks_a_candidate_and_stays_exact() -> None:
    model = _conv_model(1, 1, 1, "asymmetric")
    small = assert_compacts(model, torch.randn(2, 4, 13, 13), CompactOptions(choose_by=Measured(rounds=1)))
    choice = form_choices(small)["conv"]
    assert choice.chosen in CONV_FORMS
    assert all(c.seconds is not None and c.seconds >= 0 for c in choice.candidates)


def test_measured_choice_times_at_the_serving_batch_size() -> None:
    clear_timing_cache()
    batches: list[int] = []

    def timer(modules: Sequence[nn.Module], x: torch.Tensor) -> list[float]:
        batches.append(x.shape[0])
        return [1.0] * len(modules)

    options = CompactOptions(choose_by=Measured(timer=timer, batch_size=16))
    small = assert_compacts(_conv_model(1, 1, 1, "asymmetric"), torch.randn(2, 4, 13, 13), options)
    assert batches == [16]
    assert form_choices(small)["conv"].input_shape[0] == 16
    with pytest.raises(ConfigError, match="batch_size"):
        Measured(batch_size=0)


def test_a_timer_returning_garbage_is_named() -> None:
    options = CompactOptions(choose_by=Measured(timer=lambda modules, x: [1.0]))
    with pytest.raises(ShrinkageError, match="layer 'conv'"):
        shrinkage.compact(_conv_model(1, 1, 1, "asymmetric"), (torch.randn(2, 4, 13, 13),), options)


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_convs_keep_the_plain_form(groups: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(4, 4, 5, padding=2, groups=groups), relu=nn.ReLU(),
                                      head=nn.Conv2d(4, 2, 1))).eval()  # fmt: skip
    with torch.no_grad():
        model.conv.weight[:, :, [0, -1], :] = 0
        model.conv.weight[:, :, :, [0, -1]] = 0
    small = assert_compacts(model, torch.randn(2, 4, 9, 9), CompactOptions(choose_by=Prefer("cropped-kernel")))
    assert type(small.conv) is nn.Conv2d and "conv" not in form_choices(small)


def test_round_to_keeps_zero_channels_up_to_a_multiple() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 32, 3, padding=1), relu1=nn.ReLU(), conv2=nn.Conv2d(32, 32, 3, padding=1), relu2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc1=nn.Linear(32, 40), relu3=nn.ReLU(),
        fc2=nn.Linear(40, 10),
    )).eval()  # fmt: skip
    with torch.no_grad():
        model.conv1.weight[:13] = 0
        model.conv1.bias[:13] = -1.0  # dead after the ReLU: zero constants
        model.conv2.weight[:21] = 0
        model.conv2.bias[:21] = 0
        model.fc1.weight[:7] = 0
        model.fc1.bias[:7] = 0
    x = torch.randn(3, 3, 8, 8)
    plain = shrinkage.compact(model, (x,))
    assert (plain.conv1.out_channels, plain.conv2.out_channels, plain.fc1.out_features) == (19, 11, 33)
    small = assert_compacts(model, x, CompactOptions(round_to=8))  # the pool makes any size fit
    assert (small.conv1.out_channels, small.conv2.out_channels, small.fc1.out_features) == (24, 16, 40)
    assert small.conv2.in_channels == 24 and small.fc1.in_features == 16


def test_round_to_applies_to_selected_inputs() -> None:
    model = MLP().eval()
    with torch.no_grad():
        model.fc1.weight[:, :603] = 0  # 181 input pixels still read
    small = assert_compacts(model, torch.randn(2, 1, 28, 28), CompactOptions(round_to=8), resize=False)
    assert small.fc1.select.index.numel() == 184 and small.fc1.layer.in_features == 184


@pytest.mark.parametrize("value", [0, -8, 2.5, True, "8"])
def test_round_to_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(ConfigError, match="round_to"):
        CompactOptions(round_to=value)  # type: ignore[arg-type]


def test_choose_by_must_be_a_policy() -> None:
    with pytest.raises(ConfigError, match="choose_by"):
        CompactOptions(choose_by="measured")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="choose_by"):
        shrinkage.factorize(nn.Sequential(nn.Linear(8, 8)), 0.5, choose_by="fastest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rounds"):
        Measured(rounds=0)


def _low_rank_model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(8, 16, 3, padding=1), relu=nn.ReLU(), flatten=nn.Flatten(),
                                      fc=nn.Linear(16 * 6 * 6, 64))).eval()  # fmt: skip
    with torch.no_grad():
        model.conv.weight.copy_((torch.randn(16, 2) @ torch.randn(2, 72)).reshape(16, 8, 3, 3))
        model.fc.weight.copy_(torch.randn(64, 3) @ torch.randn(3, 576))
    return model, torch.randn(4, 8, 6, 6)


@pytest.mark.parametrize("form", ["two-layers", "dense-product"])
def test_factorized_layers_as_a_pair_or_as_their_dense_product(form: str, tmp_path) -> None:
    model, x = _low_rank_model()
    pair = shrinkage.factorize(model, 0.999)
    chosen = shrinkage.factorize(model, 0.999, example_inputs=(x,), choose_by=Prefer(form))
    fresh = torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        scale = float(pair(fresh).abs().max())
    assert max_output_difference(pair, chosen, (fresh,)) <= 1e-5 * scale  # float round-off only
    children = {"two-layers": ["project", "expand"], "dense-product": ["product"]}[form]
    for name in ("conv", "fc"):
        assert [n for n, _ in chosen.get_submodule(name).named_children()] == children
    assert {name: c.chosen for name, c in form_choices(chosen).items()} == {"conv": form, "fc": form}
    loaded = shrinkage.load(shrinkage.save(chosen, tmp_path / "f.safetensors"), _low_rank_model()[0])
    assert max_output_difference(chosen, loaded, (x,)) == 0.0


def test_factorize_by_macs_keeps_the_pair_where_it_is_cheaper() -> None:
    model, x = _low_rank_model()
    chosen = shrinkage.factorize(model, 0.999, example_inputs=(x,), choose_by=ByMacs())
    choices = form_choices(chosen)
    assert {name: c.chosen for name, c in choices.items()} == {"conv": "two-layers", "fc": "two-layers"}
    macs = {c.form: c.macs for c in choices["fc"].candidates}
    assert macs["two-layers"] < macs["dense-product"]
    # without example inputs there is nothing to choose on: pairs, no record
    assert form_choices(shrinkage.factorize(model, 0.999)) == {}


@pytest.mark.parametrize("form", CONV_FORMS)
def test_every_conv_form_saves_and_loads(form: str, tmp_path) -> None:
    model = _conv_model(2, 1, 1, "asymmetric")
    x = torch.randn(2, 4, 13, 13)
    small = shrinkage.compact(model, (x,), CompactOptions(choose_by=Prefer(form)))
    loaded = shrinkage.load(shrinkage.save(small, tmp_path / "m.safetensors"), _conv_model(1, 1, 0, "ring", seed=5))
    assert [type(m) for m in loaded.modules()] == [type(m) for m in small.modules()]
    assert max_output_difference(small, loaded, (torch.randn(3, 4, 13, 13),)) == 0.0


class _Doubled(nn.Module):
    """``2 * layer(x) - layer(x)``: an exact (if pointless) form, for the registry test."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x)
        return 2 * y - y


class _DoubledForm(LayerForm):
    label = "doubled"
    simplicity = 9

    def __init__(self, exact: bool = True) -> None:
        self.exact = exact

    def build(self, subject: nn.Module, ctx: FormContext) -> nn.Module | None:
        layer = nn.Linear(subject.in_features, subject.out_features)
        layer.load_state_dict(subject.state_dict())
        if not self.exact:
            with torch.no_grad():
                layer.bias.add_(1.0)
        return _Doubled(layer)


def test_a_registered_form_is_offered_and_checked(monkeypatch) -> None:
    monkeypatch.setitem(FORMS, nn.Linear, list(FORMS[nn.Linear]))  # restored after the test
    register_form(nn.Linear, _DoubledForm())
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(6, 5), relu=nn.ReLU(), fc2=nn.Linear(5, 2))).eval()
    small = assert_compacts(model, torch.randn(3, 6), CompactOptions(choose_by=Prefer("doubled")), resize=False)
    assert isinstance(small.fc1, _Doubled) and form_choices(small)["fc1"].chosen == "doubled"
    register_form(nn.Linear, _DoubledForm(exact=False))  # same label: replaces the exact one
    with pytest.raises(ShrinkageError, match="form 'doubled' of layer 'fc1'"):
        shrinkage.compact(model, (torch.randn(3, 6),), CompactOptions(choose_by=Prefer("doubled")))
