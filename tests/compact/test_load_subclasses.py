"""Shrunk subclasses of supported layers (timm's ``BatchNormAct2d`` and ``Conv2dSame``, a
user's ``nn.Linear`` subclass) keep their type through compaction; ``save`` / ``load`` must
bring them back as the same class, with their extra attributes and children, and equal
outputs. They are rebuilt from the fresh base model's own layers: nothing is unpickled
and no class is looked up by the name the file gives."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import shrinkage
from shrinkage.compact import SelectInputs, layout_plan, max_output_difference
from shrinkage.compact.forms import FORMS
from shrinkage.compact.layer_forms import Plain, SelectedInputs
from shrinkage.compact.layout_schema import LayoutError

from support.exactness import assert_compacts_exactly
from support.pickling import refuse_unpickling

timm = pytest.importorskip("timm")
from timm.layers import BatchNormAct2d, Conv2dSame  # noqa: E402


class Scaled(nn.Linear):
    """A user's Linear subclass: an extra attribute its forward reads."""

    def __init__(self, in_features: int, out_features: int, scale: float) -> None:
        super().__init__(in_features, out_features)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * self.scale


class NormActNet(nn.Module):
    """conv -> BatchNormAct2d (batch norm, then SiLU) -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = BatchNormAct2d(8, act_layer=nn.SiLU)
        self.conv2 = nn.Conv2d(8, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.norm(self.conv1(x)))


class ScaledNet(nn.Module):
    """Two ``Scaled`` layers with different scales; the first reads the raw input."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = Scaled(32, 16, scale=3.0)
        self.fc2 = Scaled(16, 5, scale=0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class SameNet(nn.Module):
    """timm's TensorFlow-style "same" convs (padding computed from the input size) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = Conv2dSame(3, 8, 3, stride=2)
        self.conv2 = Conv2dSame(8, 6, 3, stride=2)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv2(torch.relu(self.conv1(x))).mean(dim=(2, 3)))


def _zero_outputs(conv_or_linear: nn.Module, rows: list[int]) -> None:
    with torch.no_grad():
        conv_or_linear.weight[rows] = 0
        conv_or_linear.bias[rows] = 0


def _norm_act_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = NormActNet().eval()
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
        model.norm.weight.uniform_(0.5, 1.5)
    _zero_outputs(model.conv1, [1, 4, 6])  # norm then passes a constant: removed and folded into conv2's bias
    return model


def _scaled_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = ScaledNet().eval()
    _zero_outputs(model.fc1, [0, 3, 5, 9])
    return model


def _same_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = SameNet().eval()
    _zero_outputs(model.conv1, [2, 5])
    _zero_outputs(model.conv2, [0])
    return model


def _round_trip(make_base: Callable[[], nn.Module], path: Path) -> Callable[[nn.Module, tuple[Any, ...]], nn.Module]:
    """``compact=`` for the exactness helper: compact, save, load into a fresh base model
    (other random weights: everything must come from the file), with unpickling refused."""

    def run(model: nn.Module, inputs: tuple[Any, ...]) -> nn.Module:
        small = shrinkage.compact(model, inputs)
        shrinkage.save(small, path)
        torch.manual_seed(123)
        base = make_base()
        with pytest.MonkeyPatch.context() as patch:  # only around load: capture deep-copies through copyreg
            refuse_unpickling(patch)
            loaded = shrinkage.load(path, base).eval()
        assert [type(m) for m in loaded.modules()] == [type(m) for m in small.modules()]
        assert max_output_difference(small, loaded, inputs) == 0.0
        return loaded

    return run


CASES: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "BatchNormAct2d": (_norm_act_net, (2, 3, 10, 10)),
    "Linear subclass": (_scaled_net, (3, 32)),
    "Conv2dSame": (_same_net, (2, 3, 13, 11)),  # odd sizes: the "same" padding is asymmetric
}
#: a fresh base model of each case: built like the original, not zeroed, other weights
NEW: dict[str, Callable[[], nn.Module]] = {"BatchNormAct2d": NormActNet, "Linear subclass": ScaledNet,
                                           "Conv2dSame": SameNet}  # fmt: skip
SUBCLASS = {"BatchNormAct2d": "BatchNormAct2d", "Linear subclass": "Scaled", "Conv2dSame": "Conv2dSame"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_shrunk_subclass_loads_back_as_itself(case: str, tmp_path) -> None:
    make, shape = CASES[case]
    model = make()
    path = tmp_path / "model.safetensors"
    loaded = assert_compacts_exactly(model, torch.randn(shape), compact=_round_trip(NEW[case], path))
    layout = json.loads(_metadata(path)["layout"])
    assert any(entry.get("subclass") == SUBCLASS[case] for entry in layout.values()), layout
    shrunk = [m for m in loaded.modules() if type(m).__name__ == SUBCLASS[case]]
    assert shrunk, f"no {SUBCLASS[case]} left in the loaded model"


def test_the_subclass_keeps_its_own_attributes_and_children(tmp_path) -> None:
    small = shrinkage.compact(_norm_act_net(), (torch.randn(2, 3, 10, 10),))
    loaded = shrinkage.load(shrinkage.save(small, tmp_path / "m.safetensors"), NormActNet())
    assert type(loaded.norm) is BatchNormAct2d and loaded.norm.num_features == 5
    assert isinstance(loaded.norm.act, nn.SiLU)  # the activation comes from the base model's layer
    torch.testing.assert_close(loaded.norm.running_var, small.norm.running_var, rtol=0, atol=0)

    scaled = shrinkage.compact(_scaled_net(), (torch.randn(3, 32),))
    back = shrinkage.load(shrinkage.save(scaled, tmp_path / "s.safetensors"), ScaledNet())
    assert (type(back.fc1), back.fc1.in_features, back.fc1.out_features, back.fc1.scale) == (Scaled, 32, 12, 3.0)
    assert (type(back.fc2), back.fc2.in_features, back.fc2.scale) == (Scaled, 12, 0.5)


class SelectedNet(nn.Module):
    """A ``Scaled`` layer most of whose inputs are unused: offered the selected-inputs form,
    compaction selects the used inputs in front of a narrowed copy, so the subclass lies
    inside a new container."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = Scaled(64, 8, scale=2.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


def test_a_subclass_inside_a_new_container_is_rebuilt_from_the_layer_it_replaces(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(FORMS, Scaled, [Plain(), SelectedInputs()])  # as a user opts their subclass in
    torch.manual_seed(0)
    model = SelectedNet().eval()
    with torch.no_grad():
        model.fc.weight[:, 10:] = 0
    loaded = assert_compacts_exactly(model, torch.randn(3, 64),
                                     compact=_round_trip(SelectedNet, tmp_path / "m.safetensors"))  # fmt: skip
    assert isinstance(loaded.fc, nn.Sequential) and isinstance(loaded.fc.select, SelectInputs)
    assert (type(loaded.fc.layer), loaded.fc.layer.in_features, loaded.fc.layer.scale) == (Scaled, 10, 2.0)


def test_a_timm_model_with_batchnorm_act_round_trips_exactly(tmp_path) -> None:
    name = "mobilenetv3_small_050"

    def fresh() -> nn.Module:
        return timm.create_model(name, pretrained=False, num_classes=10).eval()

    torch.manual_seed(0)
    model = fresh()
    gen = torch.Generator().manual_seed(0)
    norms = [m for m in model.modules() if type(m) is BatchNormAct2d]
    assert len(norms) > 10
    with torch.no_grad():  # a quarter of every norm's channels switched off, as a group Lasso would leave them
        for m in norms:
            m.running_mean.uniform_(-0.5, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            off = torch.randperm(m.num_features, generator=gen)[: m.num_features // 4]
            m.weight[off] = 0
            m.bias[off] = 0
    loaded = assert_compacts_exactly(model, torch.randn(1, 3, 64, 64, generator=gen),
                                     compact=_round_trip(fresh, tmp_path / "m.safetensors"))  # fmt: skip
    assert sum(type(m) is BatchNormAct2d and m.num_features < 16 for m in loaded.modules()) > 0


def test_float64_subclass_models_load_back_as_float64(tmp_path) -> None:
    for case, (make, shape) in CASES.items():
        model = make().double()

        def round_trip(m: nn.Module, inputs: tuple[Any, ...], case: str = case) -> nn.Module:
            small = shrinkage.compact(m, inputs)
            assert {p.dtype for p in small.parameters()} == {torch.float64}
            return shrinkage.load(shrinkage.save(small, tmp_path / "double.safetensors"), NEW[case]()).eval()

        loaded = assert_compacts_exactly(model, torch.randn(shape, dtype=torch.float64), compact=round_trip, rtol=1e-12)
        floats = {t.dtype for t in loaded.state_dict().values() if t.is_floating_point()}
        assert floats == {torch.float64}, (case, floats)


# ---- a subclass entry is checked against the base model before anything is built ----------------------------


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata())


@pytest.fixture(scope="module")
def saved_norm_act(tmp_path_factory: pytest.TempPathFactory) -> Path:
    small = shrinkage.compact(_norm_act_net(), (torch.randn(2, 3, 10, 10),))
    return shrinkage.save(small, tmp_path_factory.mktemp("saved") / "norm_act.safetensors")


def _edited(source: Path, target: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    meta = _metadata(source)
    layout = json.loads(meta["layout"])
    edit(layout)
    meta["layout"] = json.dumps(layout)
    save_file(load_file(str(source)), str(target), metadata=meta)
    return target


def _set_norm(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def edit(layout: dict[str, Any]) -> None:
        if key in ("subclass", "type"):
            layout["norm"][key] = value
        else:
            layout["norm"]["args"][key] = value

    return edit


def _plain_norm_net() -> nn.Module:
    """The same network with a plain BatchNorm2d (no activation) where the file has a BatchNormAct2d."""
    model = NormActNet()
    model.norm = nn.BatchNorm2d(8)
    return model


REFUSED: dict[str, tuple[Callable[[dict[str, Any]], None], Callable[[], nn.Module], str]] = {
    "base layer of another class": (
        lambda layout: None, _plain_norm_net,
        r"'norm' \(BatchNormAct2d \(a BatchNorm2d\)\) can only be rebuilt from a base layer of that class, "
        r"not from base layer 'norm' \(BatchNorm2d\)"),
    "another subclass name": (
        _set_norm("subclass", "FrozenBatchNormAct2d"), NormActNet,
        r"'norm' \(FrozenBatchNormAct2d \(a BatchNorm2d\)\) can only be rebuilt"),
    "more channels than the base": (
        _set_norm("num_features", 10**12), NormActNet,
        r"num_features=1000000000000, more than the 8 that base layer 'norm'"),
    "a fixed argument changed": (
        _set_norm("eps", 0.5), NormActNet,
        r"has eps=0\.5, but base layer 'norm' \(BatchNormAct2d\) has eps=1e-05 \(only num_features may differ\)"),
    "a type without subclass support": (
        lambda layout: layout.update(norm={"type": "PReLU", "subclass": "Mine", "args": {"num_parameters": 5}}),
        NormActNet, r"layout\['norm'\]\.subclass: a subclass of PReLU cannot be rebuilt"),
    "a subclass of a container": (
        lambda layout: layout.update(norm={"type": "Sequential", "subclass": "Mine", "args": {"children": []}}),
        NormActNet, r"layout\['norm'\]\.subclass: a subclass of Sequential cannot be rebuilt"),
    "a dotted class name": (
        _set_norm("subclass", "timm.BatchNormAct2d"), NormActNet,
        r"layout\['norm'\]\.subclass: expected a non-empty name without dots"),
    "a child the base layer lacks": (
        lambda layout: layout.update({"norm.extra": {"type": "Identity", "args": {}}}), NormActNet,
        r"'norm\.extra' names no child of the rebuilt 'norm' \(BatchNormAct2d"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_subclass_entry_that_does_not_fit_the_base_model_is_refused(case, saved_norm_act, tmp_path, monkeypatch):
    edit, make_base, pattern = REFUSED[case]
    path = _edited(saved_norm_act, tmp_path / "edited.safetensors", edit)

    def no_building(*args: object) -> None:
        raise AssertionError("a layer was built before the layout was checked")

    monkeypatch.setattr(layout_plan, "_decode", no_building)
    base = make_base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(LayoutError, match=pattern) as info:
        shrinkage.load(path, base)
    assert "\n" not in str(info.value) and path.name in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
