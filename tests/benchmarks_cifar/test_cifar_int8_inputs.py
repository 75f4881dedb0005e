"""benchmarks/cifar_int8.py reads committed model files as well as run directories."""

from __future__ import annotations

from pathlib import Path

import torch

import shrinkage
from shrinkage.compact import compact
from shrinkage.zoo.resnet_cifar import resnet20

from support.benchmark_modules import load_benchmark


def test_a_model_file_is_named_by_its_stem_and_called_dense_only_when_nothing_was_removed(tmp_path: Path) -> None:
    b = load_benchmark("cifar_int8")
    torch.manual_seed(0)
    dense = resnet20().eval()
    shrinkage.save(dense, tmp_path / "baseline-s3.safetensors")
    with torch.no_grad():
        dense.layer2[0].conv1.weight[:5] = 0  # five channels of one branch go
        dense.layer2[0].bn1.weight[:5] = 0
        dense.layer2[0].bn1.bias[:5] = 0
    x = torch.randn(2, 3, 32, 32)
    small = compact(dense, (x,))
    shrinkage.save(small, tmp_path / "prune50-s3.safetensors")
    about, models = b.float_models(tmp_path / "baseline-s3.safetensors")
    assert about["name"] == "baseline-s3" and list(models) == ["dense"]
    about, models = b.float_models(tmp_path / "prune50-s3.safetensors")
    assert about["name"] == "prune50-s3" and list(models) == ["target"]
    assert torch.allclose(models["target"](x), dense(x), atol=1e-5)
