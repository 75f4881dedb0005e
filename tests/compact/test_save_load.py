"""Save and load without pickle: rebuild from a fresh original model plus the file."""

from __future__ import annotations


import pytest
import torch
from support.pickling import refuse_unpickling
from support.sparsity import randomize_norm_stats, zero_random_structures
from support.zoo import FAST, build, zero_coupled, zero_heads
from torch import nn

import shrinkage
from shrinkage.compact import LoweredConv2d, SelectInputs, max_output_difference, serialize
from shrinkage.errors import DataError, ShrinkageError
from shrinkage.zoo import MLP, ConvNet, LeNet, resnet20

FAMILIES = {
    "lenet": (LeNet, (1, 28)),
    "mlp": (MLP, (1, 28)),
    "convnet": (ConvNet, (1, 28)),
    "resnet20": (lambda: resnet20(in_channels=3), (3, 16)),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("factorize", [False, True])
def test_round_trip_gives_equal_outputs(family: str, factorize: bool, tmp_path, monkeypatch) -> None:
    build, (channels, size) = FAMILIES[family]
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = build().eval()
    randomize_norm_stats(model, gen)
    zero_random_structures(model, gen, fraction=0.3)
    x = torch.randn(3, channels, size, size, generator=gen)
    small = shrinkage.compact(model, (x,))
    if factorize:
        small = shrinkage.factorize(small, 0.7)
    path = shrinkage.save(small, tmp_path / "model.safetensors")

    refuse_unpickling(monkeypatch)
    torch.manual_seed(123)  # a fresh model with different weights: everything must come from the file
    loaded = shrinkage.load(path, build()).eval()
    assert max_output_difference(small, loaded, (x,)) == 0.0
    assert [type(m) for m in loaded.modules()] == [type(m) for m in small.modules()]


def test_inserted_modules_survive_the_round_trip(tmp_path) -> None:
    model = MLP().eval()
    lenet = LeNet().eval()
    with torch.no_grad():
        model.fc1.weight[:, :500] = 0
        lenet.conv2.weight.view(50, -1)[:, torch.randperm(500)[:400]] = 0
    for net, check in ((model, lambda m: isinstance(m.fc1.select, SelectInputs)),
                       (lenet, lambda m: isinstance(m.conv2, LoweredConv2d))):
        x = torch.randn(2, 1, 28, 28)
        small = shrinkage.compact(net, (x,))
        loaded = shrinkage.load(shrinkage.save(small, tmp_path / "m.safetensors"), type(net)())
        assert check(loaded)
        assert max_output_difference(small, loaded, (x,)) == 0.0


def test_bad_files_are_named(tmp_path) -> None:
    with pytest.raises(DataError, match="missing.safetensors"):
        shrinkage.load(tmp_path / "missing.safetensors", LeNet())
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    with pytest.raises(DataError, match="junk.safetensors"):
        shrinkage.load(junk, LeNet())
    path = shrinkage.save(LeNet(), tmp_path / "lenet.safetensors")
    with pytest.raises(ShrinkageError, match="LeNet.*MLP"):
        shrinkage.load(path, MLP())


def test_save_is_atomic(tmp_path, monkeypatch) -> None:
    path = shrinkage.save(LeNet(), tmp_path / "m.safetensors")
    before = path.read_bytes()

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(serialize, "save_file", explode)
    with pytest.raises(RuntimeError):
        shrinkage.save(MLP(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def _tiny_vit(seed: int) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64).eval()


TORCHVISION = {**FAST, "vit_tiny": 32}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_round_trip_rebuilds_from_a_fresh_model(name: str, tmp_path, monkeypatch) -> None:
    pytest.importorskip("torchvision")
    make = _tiny_vit if name == "vit_tiny" else lambda seed: build(name, seed)
    model = make(0)
    gen = torch.Generator().manual_seed(0)
    randomize_norm_stats(model, gen)
    shape = (2, 3, TORCHVISION[name], TORCHVISION[name])
    zero_coupled(model, shape, gen, 0.3)
    zero_heads(model, gen, 0.5)
    small = shrinkage.compact(model, (torch.randn(shape, generator=gen),))
    path = shrinkage.save(small, tmp_path / f"{name}.safetensors")
    refuse_unpickling(monkeypatch)
    loaded = shrinkage.load(path, make(123)).eval()  # different weights: all must come from the file
    assert max_output_difference(small, loaded, (torch.randn(shape, generator=gen),)) == 0
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in small.parameters())
