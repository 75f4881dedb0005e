"""``shrinkage.load`` checks a saved file completely before building anything: each damage
is refused with one ShrinkageError line naming the file and the key, module or tensor."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import shrinkage
from shrinkage.compact import LoweredConv2d, SelectInputs, layout_plan
from shrinkage.compact.layout_schema import LayoutError
from shrinkage.errors import DataError, ShrinkageError
from shrinkage.zoo import MLP, LeNet

from support.exactness import assert_compacts_exactly

Layout = dict[str, Any]


def _lenet(gen_seed: int = 0) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(gen_seed)
    model = LeNet().eval()
    with torch.no_grad():
        model.conv1.weight[:5] = 0
        model.conv1.bias[:5] = 0
    return model, torch.randn(2, 1, 28, 28)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small saved models, each with a different kind of rebuilt layer."""
    root = tmp_path_factory.mktemp("saved")
    model, x = _lenet()
    small = shrinkage.compact(model, (x,))
    factorized = shrinkage.factorize(small, 0.7, layers=["conv1", "fc2"])  # all of LeNet takes seconds
    mlp = MLP().eval()
    lowered = LeNet().eval()
    with torch.no_grad():
        mlp.fc1.weight[:, :500] = 0
        lowered.conv2.weight.view(50, -1)[:, torch.randperm(500, generator=torch.Generator().manual_seed(0))[:400]] = 0
    selected = shrinkage.compact(mlp, (torch.randn(2, 1, 28, 28),))
    gemm = shrinkage.compact(lowered, (torch.randn(2, 1, 28, 28),))
    assert isinstance(selected.fc1.select, SelectInputs) and isinstance(gemm.conv2, LoweredConv2d)
    return {
        "lenet": shrinkage.save(small, root / "lenet.safetensors"),
        "factorized": shrinkage.save(factorized, root / "factorized.safetensors"),
        "selected": shrinkage.save(selected, root / "selected.safetensors"),
        "lowered": shrinkage.save(gemm, root / "lowered.safetensors"),
    }


def _read(path: Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    return metadata, load_file(str(path))


def _rewrite(
    source: Path,
    target: Path,
    layout: Callable[[Layout], None] | None = None,
    metadata: Callable[[dict[str, str]], None] | None = None,
    tensors: Callable[[dict[str, Tensor]], None] | None = None,
) -> Path:
    """A copy of the saved model ``source`` with its layout, metadata or tensors edited."""
    meta, state = _read(source)
    if layout is not None:
        parsed = json.loads(meta["layout"])
        layout(parsed)
        meta["layout"] = json.dumps(parsed)
    if metadata is not None:
        metadata(meta)
    if tensors is not None:
        tensors(state)
    save_file(state, str(target), metadata=meta)
    return target


def _refused(path: Path, base: nn.Module, error: type[Exception], pattern: str) -> str:
    """Load must raise ``error`` with one line matching ``pattern`` and naming the file,
    and leave ``base`` as it was."""
    before = {k: v.clone() for k, v in base.state_dict().items()}
    kinds = [type(m) for m in base.modules()]
    with pytest.raises(error, match=pattern) as info:
        shrinkage.load(path, base)
    message = str(info.value)
    assert "\n" not in message and path.name in message, message
    assert [type(m) for m in base.modules()] == kinds
    after = base.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    return message


def _set(entry: str, key: str, value: object) -> Callable[[Layout], None]:
    def edit(layout: Layout) -> None:
        layout[entry]["args"][key] = value

    return edit


def _drop(entry: str, key: str) -> Callable[[Layout], None]:
    def edit(layout: Layout) -> None:
        del layout[entry]["args"][key]

    return edit


# ---- 1. the layout and metadata match their declared schema -------------------------------------------------

SCHEMA_CASES: dict[str, tuple[dict[str, Callable[..., None]], str]] = {
    "string size": ({"layout": _set("conv1", "out_channels", "15")},
                    r"layout\['conv1'\]\.args\.out_channels: expected an integer >= 0, got \"15\""),
    "boolean size": ({"layout": _set("fc1", "in_features", True)}, r"layout\['fc1'\]\.args\.in_features: .*true"),
    "float size": ({"layout": _set("fc1", "in_features", 1.5)}, r"layout\['fc1'\]\.args\.in_features: .*1\.5"),
    "negative size": ({"layout": _set("conv1", "out_channels", -3)}, r"out_channels: expected an integer >= 0, got -3"),
    "short kernel": ({"layout": _set("conv1", "kernel_size", [5])}, r"conv1'\]\.args\.kernel_size: .*list of 1"),
    "bad padding": ({"layout": _set("conv1", "padding", "wide")}, r"conv1'\]\.args\.padding: expected"),
    "unknown arg": ({"layout": _set("conv1", "colour", "red")}, r"layout\['conv1'\]\.args: unknown key 'colour'"),
    "missing arg": ({"layout": _drop("conv1", "bias")}, r"layout\['conv1'\]\.args: missing key 'bias'"),
    "unknown type": ({"layout": lambda lay: lay["conv1"].update(type="Conv9d")}, r"layout\['conv1'\]\.type: .*Conv9d"),
    "unknown entry key": ({"layout": lambda lay: lay["conv1"].update(note=1)}, r"\['conv1'\]: unknown key 'note'"),
    "missing entry key": ({"layout": lambda lay: lay["conv1"].pop("args")}, r"layout\['conv1'\]: missing key 'args'"),
    "empty name": ({"layout": lambda lay: lay.update({"conv1..x": lay["conv1"]})}, r"layout key 'conv1\.\.x'"),
    "layout not an object": ({"metadata": lambda m: m.update(layout="[1, 2]")}, r"layout: expected .*object.*list"),
    "truncated layout": ({"metadata": lambda m: m.update(layout=m["layout"][:-7])}, r"layout: invalid JSON"),
    "invalid aliases": ({"metadata": lambda m: m.update(aliases="{'a': 1}")}, r"aliases: invalid JSON"),
    "alias not a name": ({"metadata": lambda m: m.update(aliases='{"fc1.weight": 3}')}, r"aliases\['fc1.weight'\]"),
    "unknown metadata": ({"metadata": lambda m: m.update(owner="me")}, r"metadata: unknown key 'owner'"),
    "missing layout": ({"metadata": lambda m: m.pop("layout")}, r"metadata: missing key 'layout'"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_layout_and_metadata_are_checked_against_the_schema(case: str, saved, tmp_path) -> None:
    edits, pattern = SCHEMA_CASES[case]
    path = _rewrite(saved["lenet"], tmp_path / "edited.safetensors", **edits)
    _refused(path, LeNet(), LayoutError, pattern)


def test_another_format_version_is_named(saved, tmp_path) -> None:
    path = _rewrite(
        saved["lenet"], tmp_path / "v2.safetensors", metadata=lambda m: m.update(format="shrinkage.model/2")
    )
    _refused(path, LeNet(), DataError, r"format version 'shrinkage.model/2'.*reads 'shrinkage.model/1'")
    path = _rewrite(saved["lenet"], tmp_path / "other.safetensors", metadata=lambda m: m.pop("format"))
    _refused(path, LeNet(), DataError, r"not written by shrinkage.save")


# ---- 2. every entry names a place in the base model, with a layer that fits there ----------------------------


def test_an_entry_naming_no_submodule_is_named(saved, tmp_path) -> None:
    def add(layout: Layout) -> None:
        layout["classifier.fc9"] = layout["fc2"]

    path = _rewrite(saved["lenet"], tmp_path / "ghost.safetensors", layout=add)
    _refused(path, LeNet(), LayoutError, r"layout entry 'classifier\.fc9' names no submodule of the base LeNet")


def test_a_layer_kind_that_cannot_stand_in_for_the_base_layer_is_named(saved, tmp_path) -> None:
    def linear(layout: Layout) -> None:
        layout["conv1"] = {"type": "Linear", "args": {"in_features": 1, "out_features": 1, "bias": True}}

    path = _rewrite(saved["lenet"], tmp_path / "kind.safetensors", layout=linear)
    _refused(
        path, LeNet(), LayoutError, r"'conv1' \(Linear\) cannot be built in place of base layer 'conv1' \(Conv2d\)"
    )

    def conv3d(layout: Layout) -> None:
        layout["conv1"]["type"] = "Conv3d"

    path = _rewrite(saved["lenet"], tmp_path / "dims.safetensors", layout=conv3d)
    _refused(path, LeNet(), LayoutError, r"layout\['conv1'\]\.args\.kernel_size: expected a list of 3")


def test_children_of_rebuilt_containers_must_be_declared_and_described(saved, tmp_path) -> None:
    def stray(layout: Layout) -> None:
        layout["conv1.extra"] = layout["conv1.expand"]

    path = _rewrite(saved["factorized"], tmp_path / "stray.safetensors", layout=stray)
    _refused(path, LeNet(), LayoutError, r"'conv1\.extra' names no child of the rebuilt 'conv1' \(Sequential")

    path = _rewrite(saved["factorized"], tmp_path / "lost.safetensors", layout=lambda lay: lay.pop("conv1.expand"))
    _refused(path, LeNet(), LayoutError, r"'conv1' lists child 'expand', which has no entry 'conv1\.expand'")


def test_a_layout_cannot_multiply_one_base_layer(saved, tmp_path) -> None:
    def flood(layout: Layout) -> None:
        names = [f"c{i}" for i in range(40)]
        layout["fc2"] = {"type": "Sequential", "args": {"children": names}}
        layout.update({f"fc2.{n}": {"type": "Sequential", "args": {"children": []}} for n in names})

    path = _rewrite(saved["lenet"], tmp_path / "flood.safetensors", layout=flood)
    _refused(path, LeNet(), LayoutError, r"rebuilds base layer 'fc2' as more than 32 layers")


# ---- 3. sizes are bounded by the base model before anything is allocated -------------------------------------

BOUND_CASES: dict[str, tuple[str, Callable[[Layout], None], str]] = {
    "huge conv": ("lenet", _set("conv1", "out_channels", 10**12),
                  r"'conv1' \(Conv2d\) has out_channels=1000000000000, more than the 20 that base layer 'conv1'"),
    "huge linear": ("lenet", _set("fc1", "in_features", 10**12), r"'fc1' \(Linear\) has in_features=1000000000000"),
    "wider kernel": ("lenet", _set("conv1", "kernel_size", [7, 5]), r"kernel_size\[0\]=7, more than the 5"),
    "huge rank": ("factorized", _set("conv1.project", "out_channels", 10**12),
                  r"'conv1\.project' \(Conv2d\) has out_channels=1000000000000, more than the 20 .*'conv1'"),
    "huge selection": ("selected", _set("fc1.select", "kept", 10**12), r"'fc1\.select' \(SelectInputs\) has kept="),
    "huge columns": ("lowered", _set("conv2", "columns", 10**12), r"'conv2' \(LoweredConv2d\) has columns="),
    "more groups": ("lenet", _set("conv2", "groups", 5), r"'conv2' \(Conv2d\) has groups=5, more than the 1"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BOUND_CASES))
def test_sizes_beyond_the_base_layer_are_refused_before_anything_is_built(case, saved, tmp_path, monkeypatch) -> None:
    which, edit, pattern = BOUND_CASES[case]
    path = _rewrite(saved[which], tmp_path / "huge.safetensors", layout=edit)

    def no_building(*args: object) -> None:
        raise AssertionError("a layer was built before the layout was checked")

    monkeypatch.setattr(layout_plan, "_decode", no_building)
    _refused(path, MLP() if which == "selected" else LeNet(), LayoutError, pattern)


def test_a_huge_size_fails_promptly_without_running_out_of_memory(saved, tmp_path) -> None:
    path = _rewrite(saved["lenet"], tmp_path / "huge.safetensors", layout=_set("fc1", "out_features", 10**15))
    _refused(path, LeNet(), LayoutError, r"out_features=1000000000000000")  # not a MemoryError


SELECT, COLUMNS = "fc1.select.index", "conv2.columns"
INDEX_CASES: dict[str, tuple[str, str, Callable[[Tensor], None], str]] = {
    "selection out of range": ("selected", SELECT, lambda t: t.__setitem__(-1, 784), r"index 784, outside 0\.\.783"),
    "negative selection": ("selected", SELECT, lambda t: t.__setitem__(0, -1), r"holds index -1"),
    "repeated selection": ("selected", SELECT, lambda t: t.__setitem__(1, int(t[0])), r"repeated index"),
    "column out of range": ("lowered", COLUMNS, lambda t: t.__setitem__(0, 10_000), r"holds index 10000, outside"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_kept_indices_out_of_range_or_repeated_are_named(case: str, saved, tmp_path) -> None:
    which, name, edit, pattern = INDEX_CASES[case]
    path = _rewrite(saved[which], tmp_path / "index.safetensors", tensors=lambda state: edit(state[name]))
    _refused(path, MLP() if which == "selected" else LeNet(), LayoutError, rf"tensor '{re.escape(name)}' .*{pattern}")


# ---- 4. the tensors match the layers the layout builds; damaged files are named -------------------------------


def test_a_tensor_of_the_wrong_shape_is_named(saved, tmp_path) -> None:
    path = _rewrite(saved["lenet"], tmp_path / "shape.safetensors",
                    tensors=lambda state: state.update({"fc2.weight": torch.zeros(10, 7)}))  # fmt: skip
    _refused(
        path, LeNet(), LayoutError, r"tensor 'fc2\.weight' has shape \(10, 7\), but the layout implies \(10, 500\)"
    )


def test_missing_and_extra_tensors_are_named(saved, tmp_path) -> None:
    path = _rewrite(saved["lenet"], tmp_path / "missing.safetensors", tensors=lambda state: state.pop("conv2.bias"))
    _refused(path, LeNet(), LayoutError, r"tensor 'conv2\.bias' is missing")
    path = _rewrite(saved["lenet"], tmp_path / "extra.safetensors",
                    tensors=lambda state: state.update({"conv2.scale": torch.ones(1)}))  # fmt: skip
    _refused(path, LeNet(), LayoutError, r"tensor 'conv2\.scale' has no place in the model the layout rebuilds")
    path = _rewrite(saved["lenet"], tmp_path / "alias.safetensors", tensors=lambda state: state.pop("fc2.bias"),
                    metadata=lambda m: m.update(aliases='{"fc2.bias": "fc9.bias"}'))  # fmt: skip
    _refused(path, LeNet(), LayoutError, r"tensor 'fc2\.bias' is stored as 'fc9\.bias', which the file lacks")


def test_tensor_dtypes_that_do_not_fit_are_named(saved, tmp_path) -> None:
    def float_index(state: dict[str, Tensor]) -> None:
        state["fc1.select.index"] = state["fc1.select.index"].float()

    path = _rewrite(saved["selected"], tmp_path / "index.safetensors", tensors=float_index)
    _refused(path, MLP(), LayoutError, r"tensor 'fc1\.select\.index' is float32, but the layout's model needs int64")

    def mixed(state: dict[str, Tensor]) -> None:
        state["conv1.bias"] = state["conv1.bias"].double()

    path = _rewrite(saved["lenet"], tmp_path / "mixed.safetensors", tensors=mixed)
    _refused(path, LeNet(), LayoutError, r"tensor 'conv1\.(bias|weight)' is float(64|32) but 'conv1\.(weight|bias)'")


def test_missing_directory_truncated_and_corrupted_files_give_one_line(saved, tmp_path) -> None:
    _refused(tmp_path / "absent.safetensors", LeNet(), DataError, r"model file not found: .*absent\.safetensors")
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    _refused(folder, LeNet(), DataError, r"folder\.safetensors is a directory, not a model file")
    data = saved["lenet"].read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    _refused(truncated, LeNet(), DataError, r"truncated\.safetensors is not a readable safetensors file")
    corrupted = tmp_path / "corrupted.safetensors"
    corrupted.write_bytes(data[:8] + b"{" * 40 + data[48:])  # the JSON header damaged
    _refused(corrupted, LeNet(), DataError, r"corrupted\.safetensors is not a readable safetensors file")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    _refused(empty, LeNet(), DataError, r"empty\.safetensors is not a readable safetensors file")


def _layout_values(layout: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(layout, dict):
        return [p for k, v in layout.items() for p in _layout_values(v, (*path, k))]
    if isinstance(layout, list):
        return [p for i, v in enumerate(layout) for p in _layout_values(v, (*path, i))]
    return [path]


def test_any_single_edited_value_loads_or_gives_one_shrinkage_error(saved, tmp_path) -> None:
    """Replace each scalar of a factorized model's layout by odd values in turn: the load
    either works or fails with one ShrinkageError line, never another exception."""
    meta, _ = _read(saved["factorized"])
    paths = _layout_values(json.loads(meta["layout"]))
    assert len(paths) > 40
    for i, path in enumerate(paths):
        for value in (-1, 0, 10**12, "x", None, [1]):

            def edit(layout: Layout, path: tuple[Any, ...] = path, value: object = value) -> None:
                node = layout
                for key in path[:-1]:
                    node = node[key]
                node[path[-1]] = value

            target = _rewrite(saved["factorized"], tmp_path / f"fuzz{i}.safetensors", layout=edit)
            try:
                shrinkage.load(target, LeNet())
            except ShrinkageError as error:
                assert "\n" not in str(error), str(error)


# ---- 5. precision and per-channel PReLU survive the round trip ------------------------------------------------


def test_a_float64_model_loads_back_as_float64_with_equal_outputs(tmp_path) -> None:
    model, x = _lenet(3)
    model = model.double()

    def round_trip(m: nn.Module, inputs: tuple[Any, ...]) -> nn.Module:
        small = shrinkage.compact(m, inputs)
        assert {p.dtype for p in small.parameters()} == {torch.float64}
        return shrinkage.load(shrinkage.save(small, tmp_path / "double.safetensors"), LeNet()).eval()

    loaded = assert_compacts_exactly(model, (x.double(),), compact=round_trip, rtol=1e-12)
    assert {t.dtype for t in loaded.state_dict().values()} == {torch.float64}


class PReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.act = nn.PReLU(8)
        self.conv2 = nn.Conv2d(8, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.act(self.conv1(x)))


def test_a_shrunk_per_channel_prelu_is_rebuilt_by_load(tmp_path) -> None:
    torch.manual_seed(4)
    model = PReLUNet().eval()
    with torch.no_grad():
        model.conv1.weight[[1, 4, 6]] = 0
        model.conv1.bias[[1, 4, 6]] = 0
        model.act.weight.uniform_(0.1, 0.9)  # distinct slopes: a wrong channel would show

    def round_trip(m: nn.Module, inputs: tuple[Any, ...]) -> nn.Module:
        small = shrinkage.compact(m, inputs)
        return shrinkage.load(shrinkage.save(small, tmp_path / "prelu.safetensors"), PReLUNet()).eval()

    loaded = assert_compacts_exactly(model, (torch.randn(2, 3, 12, 12),), compact=round_trip)
    assert loaded.act.num_parameters == 5
    assert torch.equal(loaded.act.weight, model.act.weight[[0, 2, 3, 5, 7]])
