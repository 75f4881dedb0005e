"""Whole compacted models run in deployment with the outputs they have in PyTorch.

A ResNet-20 with a residual branch and a quarter of its coupled channels removed, LeNet
with filters, filter-shape columns and neurons removed, that LeNet factorized, and both
compacted models reloaded through ``shrinkage.save`` / ``shrinkage.load`` into fresh
models. Each goes through ``torch.export`` (dynamic batch). The reloaded ResNet-20 and
the compacted and factorized LeNets go through ONNX, with both exporters, + onnxruntime
(CPU, dynamic batch): the reloaded ResNet-20 equals the compacted one exactly, layer
types included, and the dynamo-based export of each takes about 10 s on a loaded
machine. The compacted ResNet-20 goes through ``torch.compile`` (``aot_eager``; inductor
in a ``slow`` test, see ``test_layer_export.py``). Outputs on fresh inputs of two batch
sizes equal the eager model's up to 1e-5 of the output scale.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from support.exactness import assert_compacts_exactly
from support.sparsity import randomize_norm_stats
from support.zoo import zero_coupled
from torch import nn

import shrinkage
from shrinkage.compact import max_output_difference
from shrinkage.layers import LoweredConv2d, ZeroWidthConv
from shrinkage.zoo import LeNet, resnet20

from .checks import Inputs, batch_dims, check_compile, check_export, check_onnx, has_cpp_compiler


def _resnet20() -> tuple[nn.Module, nn.Module, Inputs]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = resnet20(in_channels=3).eval()
    randomize_norm_stats(model, gen)
    x = (torch.randn(2, 3, 16, 16, generator=gen),)
    zero_coupled(model, (1, 3, 16, 16), gen, fraction=0.25)
    with torch.no_grad():  # SSL's depth: the whole branch of one block
        model.layer2[1].conv1.weight.zero_()
        model.layer2[1].conv2.weight.zero_()
    return model, assert_compacts_exactly(model, x), x


def _lenet() -> tuple[nn.Module, nn.Module, Inputs]:
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(1)
    model = LeNet().eval()
    with torch.no_grad():  # filters, filter-shape columns and neurons, as SSL leaves them
        model.conv1.weight[[2, 5, 11]] = 0
        columns = model.conv2.weight.view(model.conv2.out_channels, -1)
        columns[:, torch.randperm(columns.shape[1], generator=gen)[: columns.shape[1] // 2]] = 0
        model.conv2.weight[:, :, 0] = 0  # the top kernel row
        model.fc1.weight[torch.randperm(model.fc1.out_features, generator=gen)[:200]] = 0
    x = (torch.randn(2, 1, 28, 28, generator=gen),)
    return model, assert_compacts_exactly(model, x), x


BUILDERS: dict[str, Callable[[], tuple[nn.Module, nn.Module, Inputs]]] = {"resnet20": _resnet20, "lenet": _lenet}
#: the architectures, freshly initialized: what a saved model is loaded into
UNTRAINED: dict[str, Callable[[], nn.Module]] = {"resnet20": lambda: resnet20(in_channels=3), "lenet": LeNet}


@pytest.fixture(scope="module")
def compacted() -> dict[str, tuple[nn.Module, nn.Module, Inputs]]:
    return {name: build() for name, build in BUILDERS.items()}


def _fresh(example: Inputs) -> list[Inputs]:
    gen = torch.Generator().manual_seed(11)
    x = example[0]
    return [(torch.randn(n, *x.shape[1:], generator=gen),) for n in (x.shape[0], x.shape[0] + 3)]


def _deployed(
    name: str, compacted: dict[str, tuple[nn.Module, nn.Module, Inputs]], kind: str, tmp_path: Path
) -> tuple[nn.Module, Inputs]:
    """The model ``kind`` (compacted, factorized or reloaded) of ``name`` and its example."""
    _, small, x = compacted[name]
    if kind == "compacted":
        return small, x
    if kind == "factorized":
        factorized = shrinkage.factorize(small, 0.7).eval()
        assert sum(isinstance(m, nn.Sequential) and "project" in m._modules for m in factorized.modules()) > 0
        return factorized, x
    path = shrinkage.save(small, tmp_path / f"{name}.safetensors")
    torch.manual_seed(123)  # a fresh model with other weights: all of them must come from the file
    loaded = shrinkage.load(path, UNTRAINED[name]()).eval()
    assert [type(m) for m in loaded.modules()] == [type(m) for m in small.modules()]
    assert max_output_difference(small, loaded, x) == 0.0
    return loaded, x


ONNX = [("resnet20", "reloaded"), ("lenet", "compacted"), ("lenet", "factorized")]
EXPORT = [("resnet20", "compacted"), ("resnet20", "reloaded"), ("lenet", "compacted"), ("lenet", "factorized"),
          ("lenet", "reloaded")]  # fmt: skip


def test_the_models_hold_what_compaction_made(compacted) -> None:
    dense, small, _ = compacted["resnet20"]
    block = small.layer2[1]
    assert isinstance(block.conv1, ZeroWidthConv) and block.conv1.out_channels == 0
    assert isinstance(block.conv2, ZeroWidthConv) and block.conv2.in_channels == 0
    assert small.conv1.out_channels < dense.conv1.out_channels
    dense, small, _ = compacted["lenet"]
    assert small.conv1.out_channels < dense.conv1.out_channels
    assert isinstance(small.conv2, LoweredConv2d)  # its index buffers are rebuilt when it is loaded


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize(("name", "kind"), ONNX)
def test_onnxruntime_gives_the_same_outputs(name: str, kind: str, dynamo: bool, compacted, tmp_path) -> None:
    model, x = _deployed(name, compacted, kind, tmp_path)
    check_onnx(model, x, _fresh(x), tmp_path / f"{name}-{kind}.onnx", batch_dims(x), dynamo=dynamo)


@pytest.mark.parametrize(("name", "kind"), EXPORT)
def test_torch_export_gives_the_same_outputs(name: str, kind: str, compacted, tmp_path) -> None:
    model, x = _deployed(name, compacted, kind, tmp_path)
    check_export(model, x, _fresh(x), batch_dims(x))


def test_torch_compile_gives_the_same_outputs(compacted) -> None:
    _, small, x = compacted["resnet20"]
    check_compile(small, _fresh(x)[0], "aot_eager")


@pytest.mark.slow
@pytest.mark.skipif(not has_cpp_compiler(), reason="inductor builds its CPU kernels with a C++ compiler; none found")
def test_torch_compile_with_inductor_gives_the_same_outputs(compacted) -> None:
    _, small, x = compacted["resnet20"]
    check_compile(small, _fresh(x)[0], "inductor")
