"""The models ``benchmarks/speed.py`` times: each a dense model and a copy with the zeros
a trained SSL / compression-aware run would leave (random weights: only speed and
exactness are measured, never accuracy).

Where a structure comes from matters, so every case says it:

* **AlexNet's conv layers** at the per-layer row (filter) and column (filter-shape)
  sparsity of the SSL paper's AlexNet result (Wen et al., 2016, Table 4, the SSL row
  with 44.66% top-1 error). The paper's text was not available offline to check, so the
  figures below are as we recall them: treat them as an assumption. torchvision's
  AlexNet (64-192-384-256-256 filters, no grouped convs) stands in for Caffe's
  (96-256-384-384-256, conv2/4/5 in two groups). Columns are chosen at random among
  those not already zero because of a removed input channel.
* **LeNet** with the filter counts our own SSL runs reached on MNIST (read from
  ``results/mnist/*.json``, not typed here).
* **ResNet-20, resnet18, mobilenet_v2** pruned to half their MACs with ``shrinkage.prune``
  (coupled channels; widths as the importance leaves them, or rounded to multiples of 8
  or of 16, oneDNN's channel block with AVX-512), and ResNet-20
  with one residual branch per stage removed (SSL depth).
* **Factorized layers**: LeNet and ResNet-20 weights given a geometrically decaying
  spectrum, then ``shrinkage.factorize`` at 80% and 90% energy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn

import shrinkage
from shrinkage import Budget
from shrinkage.zoo.lenet import LeNet
from shrinkage.zoo.resnet_cifar import resnet20

ROOT = Path(__file__).resolve().parent.parent

#: (row sparsity, column sparsity) per conv layer: Wen et al. 2016, Table 4 (SSL, 44.66%
#: top-1), as recalled; an assumption, see the module docstring
#: keyed by the layer's index in ``torchvision.models.alexnet().features`` (conv1 ... conv5)
ALEXNET_SSL = {
    "0": (0.094, 0.0),
    "3": (0.129, 0.632),
    "6": (0.406, 0.769),
    "8": (0.469, 0.847),
    "10": (0.0, 0.807),
}


@dataclass
class Case:
    """One row group of the speed benchmark.

    ``build`` returns ``(dense, compact)``: the dense model and its compact counterpart
    (compacted or factorized; exactness is checked by the benchmark). ``zeroed`` is the
    dense-shaped model with the zeros, the reference for exactness and for the matched
    L1 baseline (``None`` where the compact model is an approximation, as factorization).
    """

    name: str
    description: str
    input_shape: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    build: Callable[[], tuple[nn.Module, nn.Module | None, nn.Module]]
    #: layers timed one by one (names in the dense model)
    layers: tuple[str, ...] = ()
    #: also time the element-wise (L1) sparse baseline at the same per-layer sparsity
    l1_baseline: bool = False
    #: the model is a stack of conv layers only: its speedup is the "conv layers" figure
    conv_only: bool = False
    notes: list[str] = field(default_factory=list)


def _zero_filters(conv: nn.Conv2d, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Zero ``fraction`` of ``conv``'s filters (and their biases); returns the kept mask."""
    n = conv.out_channels
    drop = torch.randperm(n, generator=generator)[: round(fraction * n)]
    keep = torch.ones(n, dtype=torch.bool)
    keep[drop] = False
    with torch.no_grad():
        conv.weight[~keep] = 0
        if conv.bias is not None:
            conv.bias[~keep] = 0
    return keep


def _zero_columns(conv: nn.Conv2d, fraction: float, dead_inputs: torch.Tensor, generator: torch.Generator) -> None:
    """Zero filter-shape columns until ``fraction`` of all columns are zero, counting the
    columns of input channels that are already dead (an upstream filter removed)."""
    kk = conv.kernel_size[0] * conv.kernel_size[1]
    flat = conv.weight.detach().reshape(conv.out_channels, -1)
    dead = dead_inputs.repeat_interleave(kk)
    want = round(fraction * flat.shape[1]) - int(dead.sum())
    if want <= 0:
        return
    alive = (~dead).nonzero().flatten()
    drop = alive[torch.randperm(alive.numel(), generator=generator)[:want]]
    with torch.no_grad():
        flat[:, drop] = 0
        conv.weight.copy_(flat.reshape_as(conv.weight))


def alexnet_conv_ssl() -> tuple[nn.Module, nn.Module, nn.Module]:
    generator = torch.Generator().manual_seed(0)
    dense = torchvision.models.alexnet().features.eval()
    zeroed = _copy(dense)
    dead = torch.zeros(3, dtype=torch.bool)
    for name, (rows, cols) in ALEXNET_SSL.items():
        conv = zeroed.get_submodule(name)
        _zero_columns(conv, cols, dead, generator)
        dead = ~_zero_filters(conv, rows, generator)
    return dense, zeroed, _compact(zeroed, (1, 3, 227, 227))


def _lenet_result(name: str) -> dict[str, dict]:
    path = ROOT / "results" / "mnist" / f"{name}.json"
    layers = json.loads(path.read_text())["report"]["layers"]
    return {row["name"]: row for row in layers}


def lenet_from_result(name: str) -> Callable[[], tuple[nn.Module, nn.Module, nn.Module]]:
    """LeNet with as many filters as the recorded SSL run ``name`` kept per conv layer."""

    def build() -> tuple[nn.Module, nn.Module, nn.Module]:
        layers = _lenet_result(name)
        torch.manual_seed(0)
        dense = LeNet().eval()
        zeroed = _copy(dense)
        with torch.no_grad():
            for conv in ("conv1", "conv2"):
                kept = layers[conv]["filters"] - layers[conv]["zero_filters"]
                layer = zeroed.get_submodule(conv)
                layer.weight[kept:] = 0
                layer.bias[kept:] = 0
        return dense, zeroed, _compact(zeroed, (1, 1, 28, 28))

    return build


def pruned(factory: Callable[[], nn.Module], size: int, macs: float, round_to: int = 1) -> Callable[[], tuple]:
    """``factory()`` pruned with ``shrinkage.prune`` to ``macs`` of its MACs (coupled channels)."""

    def build() -> tuple[nn.Module, nn.Module, nn.Module]:
        torch.manual_seed(0)
        dense = factory().eval()
        result = shrinkage.prune(dense, torch.randn(1, 3, size, size), Budget(macs=macs), round_to=round_to,
                                 depth=False)  # fmt: skip
        return dense, result.model.eval(), result.compact.eval()

    return build


def resnet20_depth() -> tuple[nn.Module, nn.Module, nn.Module]:
    """ResNet-20 with the last block's branch of every stage zeroed (SSL depth)."""
    torch.manual_seed(0)
    dense = resnet20(3, 10).eval()
    zeroed = _copy(dense)
    with torch.no_grad():
        for stage in ("layer1", "layer2", "layer3"):
            zeroed.get_submodule(stage)[-1].conv2.weight.zero_()  # the branch's output is a constant
    return dense, zeroed, _compact(zeroed, (1, 3, 32, 32))


def _decaying_spectrum(weight: torch.Tensor, rank_at_90: int, generator: torch.Generator) -> torch.Tensor:
    """A random matrix of ``weight``'s shape whose singular values decay geometrically so
    that ``rank_at_90`` of them hold 90% of the energy (sum of squares)."""
    matrix = weight.reshape(weight.shape[0], -1)
    u, _, vh = torch.linalg.svd(torch.randn(matrix.shape, generator=generator), full_matrices=False)
    q = math.exp(math.log(0.1) / (2 * rank_at_90))  # energy of the first r: 1 - q^(2r)
    s = q ** torch.arange(u.shape[1], dtype=matrix.dtype) * float(matrix.norm())
    return (u * s) @ vh


def factorized(factory: Callable[[], nn.Module], shape: tuple[int, ...], layers: dict[str, int],
               energy: float) -> Callable[[], tuple]:  # fmt: skip
    """``layers`` (name -> rank holding 90% of the energy) given decaying spectra, then
    factorized at ``energy``. The compact model approximates the dense one."""

    def build() -> tuple[nn.Module, None, nn.Module]:
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        dense = factory().eval()
        with torch.no_grad():
            for name, rank in layers.items():
                w = dense.get_submodule(name).weight
                w.copy_(_decaying_spectrum(w, rank, generator).reshape_as(w))
        small = shrinkage.factorize(dense, energy, layers=list(layers)).eval()
        return dense, None, small

    return build


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).eval()


def _compact(zeroed: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    return shrinkage.compact(zeroed, (torch.randn(shape),)).eval()


def _lenet() -> nn.Module:
    return LeNet()


def _resnet20() -> nn.Module:
    return resnet20(3, 10)


LENET_CONVS = ("conv1", "conv2", "fc1")
RESNET20_LOW_RANK = {"layer2.0.conv2": 12, "layer3.0.conv1": 16, "layer3.0.conv2": 16, "layer3.1.conv1": 16}

CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("alexnet_conv_ssl", "AlexNet conv layers (227x227) at SSL's per-layer sparsity", (3, 227, 227), (1, 16),
             alexnet_conv_ssl, tuple(ALEXNET_SSL), l1_baseline=True, conv_only=True),
        Case("lenet_ssl_filters", "LeNet, filters kept by our SSL filters+channels run", (1, 28, 28), (1, 64),
             lenet_from_result("lenet_ssl_filters_channels"), LENET_CONVS, l1_baseline=True),
        Case("lenet_ssl_shapes", "LeNet, filters kept by our SSL shapes+filters run", (1, 28, 28), (1, 64),
             lenet_from_result("lenet_ssl_shapes"), LENET_CONVS, l1_baseline=True),
        Case("resnet20_width", "ResNet-20 (32x32), coupled channels pruned to 50% MACs", (3, 32, 32), (1, 64),
             pruned(_resnet20, 32, 0.5)),
        Case("resnet20_width_r8", "ResNet-20, 50% MACs, widths multiples of 8", (3, 32, 32), (1, 64),
             pruned(_resnet20, 32, 0.5, round_to=8)),
        Case("resnet20_width_r16", "ResNet-20, 50% MACs, widths multiples of 16", (3, 32, 32), (1, 64),
             pruned(_resnet20, 32, 0.5, round_to=16)),
        Case("resnet20_depth", "ResNet-20, one residual branch per stage removed", (3, 32, 32), (1, 64),
             resnet20_depth),
        Case("resnet18_width", "resnet18 (224x224), coupled channels pruned to 50% MACs", (3, 224, 224), (1, 16),
             pruned(torchvision.models.resnet18, 224, 0.5)),
        Case("resnet18_width_r8", "resnet18, 50% MACs, widths multiples of 8", (3, 224, 224), (1, 16),
             pruned(torchvision.models.resnet18, 224, 0.5, round_to=8)),
        Case("resnet18_width_r16", "resnet18, 50% MACs, widths multiples of 16", (3, 224, 224), (1, 16),
             pruned(torchvision.models.resnet18, 224, 0.5, round_to=16)),
        Case("mobilenet_v2_width", "mobilenet_v2 (224x224), coupled channels pruned to 50% MACs", (3, 224, 224),
             (1, 16), pruned(torchvision.models.mobilenet_v2, 224, 0.5)),
        Case("mobilenet_v2_width_r8", "mobilenet_v2, 50% MACs, widths multiples of 8", (3, 224, 224), (1, 16),
             pruned(torchvision.models.mobilenet_v2, 224, 0.5, round_to=8)),
        Case("mobilenet_v2_width_r16", "mobilenet_v2, 50% MACs, widths multiples of 16", (3, 224, 224), (1, 16),
             pruned(torchvision.models.mobilenet_v2, 224, 0.5, round_to=16)),
        Case("lenet_lowrank_90", "LeNet, decaying spectra, factorized at 90% energy", (1, 28, 28), (1, 64),
             factorized(_lenet, (1, 28, 28), {"conv2": 6, "fc1": 24}, 0.9), ("conv2", "fc1")),
        Case("lenet_lowrank_80", "LeNet, decaying spectra, factorized at 80% energy", (1, 28, 28), (1, 64),
             factorized(_lenet, (1, 28, 28), {"conv2": 6, "fc1": 24}, 0.8), ("conv2", "fc1")),
        Case("resnet20_lowrank_90", "ResNet-20, decaying spectra, factorized at 90% energy", (3, 32, 32), (1, 64),
             factorized(_resnet20, (3, 32, 32), RESNET20_LOW_RANK, 0.9), tuple(RESNET20_LOW_RANK)),
    )
}  # fmt: skip
