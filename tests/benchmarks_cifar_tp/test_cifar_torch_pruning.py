"""benchmarks/cifar_torch_pruning.py: the MAC search, the sparse-training hook and the saved model,
on a randomly initialized ResNet-20 (no data set)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

import shrinkage
from shrinkage.metrics import count_macs
from shrinkage.zoo.resnet_cifar import resnet20

from support.benchmark_modules import load_benchmark

pytest.importorskip("torch_pruning")


def bench() -> ModuleType:
    return load_benchmark("cifar_torch_pruning")


def _trained_like() -> nn.Module:
    """A ResNet-20 with spread-out BatchNorm scales, so importances differ as after training."""
    torch.manual_seed(0)
    model = resnet20().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5)
    return model


@pytest.mark.parametrize("method", ["magnitude", "group_norm"])
def test_prune_to_macs_lands_in_the_band_below_the_target(method: str) -> None:
    b = bench()
    dense = _trained_like()
    before = copy.deepcopy(dense.state_dict())
    x = torch.randn(1, 3, 32, 32)
    pruned = b.prune_to_macs(dense, x, 0.5, b.METHODS[method], steps=100, reg=1e-4)
    dense_macs = count_macs(dense, (x,)).total
    measured = count_macs(pruned.model, (x,)).total
    assert measured == pruned.macs
    assert (1 - b.BAND) * 0.5 * dense_macs <= measured <= 0.5 * dense_macs
    assert sum(p.numel() for p in pruned.model.parameters()) < sum(p.numel() for p in dense.parameters())
    assert pruned.model.fc.out_features == 10  # the classifier is left alone
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in before.items())  # the dense model is untouched


def test_regularized_steps_add_the_group_regularization_only_inside() -> None:
    b = bench()
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    def one_step(model: nn.Module) -> torch.Tensor:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()
        return model.conv1.weight.detach().clone()

    base = _trained_like()
    plain = one_step(copy.deepcopy(base))
    model = copy.deepcopy(base)
    pruner = b.METHODS["group_norm"].build(model, x[:1], 1, 1e-2)
    with b.regularized_steps(model, pruner):
        regularized = one_step(model)
    # regularize() adds reg * gamma * w (gamma in [1, 16]) to the gradient: the step shrinks the weights more
    shrink = base.conv1.weight - regularized - (base.conv1.weight - plain)
    assert torch.all(shrink * base.conv1.weight >= 0)
    assert shrink.abs().max() > 1e-4
    again = copy.deepcopy(base)
    assert torch.equal(one_step(again), plain)  # the hook is gone after the block


def test_pruned_model_round_trips_through_shrinkage_save(tmp_path: Path) -> None:
    b = bench()
    x = torch.randn(3, 3, 32, 32)
    pruned = b.prune_to_macs(_trained_like(), x[:1], 0.8, b.METHODS["magnitude"], steps=50, reg=1e-4)
    files = b.save_model(pruned.model, resnet20, pruned.history, tmp_path / "m.safetensors", x)
    assert files["format"] == "shrinkage.save" and files["roundtrip_max_abs_diff"] == 0.0
    again = shrinkage.load(tmp_path / "m.safetensors", resnet20()).eval()
    assert torch.equal(again(x), pruned.model.eval()(x))
    assert again.conv1.out_channels < 16


def test_a_model_file_needs_its_config_and_a_run_directory_takes_none(tmp_path: Path) -> None:
    b = bench()
    model_file = tmp_path / "baseline.safetensors"
    shrinkage.save(resnet20(), model_file)
    with pytest.raises(shrinkage.errors.ConfigError, match="is a model file: give the config it was trained with"):
        b.load_source(model_file, None, [])
    with pytest.raises(shrinkage.errors.ConfigError, match="--config and --set apply to a model file"):
        b.load_source(tmp_path, tmp_path / "config.yaml", [])
    with pytest.raises(shrinkage.errors.ConfigError, match="--config and --set apply to a model file"):
        b.load_source(tmp_path, None, ["train.seed=1"])
