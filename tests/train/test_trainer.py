"""Training loop: metrics, checkpoints, exact resume, divergence errors."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from shrinkage.config import Mode
from shrinkage.data import ImageDataset
from shrinkage.errors import ConfigError, TrainingError
from shrinkage.io import load_checkpoint
from shrinkage.train import CHECKPOINT, METRICS, Trainer

from .helpers import Stop, stop_after, tiny_config, tiny_model, without_time

Datasets = tuple[ImageDataset, ImageDataset]


def test_fit_writes_metrics_and_checkpoint(tmp_path: Path, datasets: Datasets) -> None:
    config = tiny_config()
    result = Trainer(config, tiny_model(), *datasets, tmp_path).fit()
    assert [(r["phase"], r["epoch"]) for r in result.rows] == [("regularize", 1), ("regularize", 2), ("finetune", 1)]
    assert [r["lr"] for r in result.rows] == [0.05, 0.025, 0.01]  # StepLR(1, 0.5), then finetune.lr
    with open(tmp_path / METRICS) as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 3 and "conv1.filters.zero_groups" in table[0] and "fc1.channels.zero_groups" in table[0]
    assert all(int(r["global_epoch"]) == i for i, r in enumerate(table, 1))
    state = load_checkpoint(tmp_path / CHECKPOINT).state
    assert state["finished"] and state["phase"] == "finetune" and state["epoch"] == 1


@pytest.mark.parametrize("mode", [Mode.PROXIMAL, Mode.SUBGRADIENT])
@pytest.mark.parametrize("stop", [1, 2])  # inside the first phase, and at the phase boundary
def test_resume_equals_uninterrupted(tmp_path: Path, datasets: Datasets, mode: Mode, stop: int) -> None:
    config = tiny_config(mode)
    straight = Trainer(config, tiny_model(), *datasets, tmp_path / "a").fit()

    with pytest.raises(Stop):
        Trainer(config, tiny_model(), *datasets, tmp_path / "b", on_epoch_end=stop_after(stop)).fit()
    # a different initialization proves that the weights come from the checkpoint
    resumed = Trainer(config, tiny_model(seed=42), *datasets, tmp_path / "b").fit()

    assert resumed.resumed_at == stop
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert without_time(straight.rows) == without_time(resumed.rows)


def test_subgradient_mode_zeroes_small_groups_at_phase_end(tmp_path: Path, datasets: Datasets) -> None:
    config = tiny_config(Mode.SUBGRADIENT, finetune=0)
    trainer = Trainer(config, tiny_model(), *datasets, tmp_path)
    trainer.fit()
    # every group of the regularized terms is either exactly zero or above the threshold
    for term in trainer.regularizer.terms:
        norms = term.grouping.gather().detach().norm(dim=1)
        assert bool(((norms == 0) | (norms >= config.regularization.zero_threshold)).all())


def test_finetune_keeps_zeros(tmp_path: Path, datasets: Datasets) -> None:
    model = tiny_model()
    with torch.no_grad():
        model.fc1.weight[:3] = 0  # three dead neurons before training: fine-tuning must not revive them
    Trainer(tiny_config(epochs=0, finetune=2), model, *datasets, tmp_path).fit()
    assert bool((model.fc1.weight[:3] == 0).all()) and bool((model.fc1.weight[3:] != 0).any())


def test_resume_with_a_different_config_is_refused(tmp_path: Path, datasets: Datasets) -> None:
    Trainer(tiny_config(epochs=1, finetune=0), tiny_model(), *datasets, tmp_path).fit()
    with pytest.raises(ConfigError, match="train.epochs"):
        Trainer(tiny_config(epochs=2, finetune=0), tiny_model(), *datasets, tmp_path).fit()


def poison(model: nn.Module, at: int) -> nn.Module:
    """Make ``model`` return NaN logits from its ``at``-th training forward pass on."""
    calls = [0]

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if module.training:
            calls[0] += 1
            if calls[0] >= at:
                return output * float("nan")
        return None

    model.register_forward_hook(hook)
    return model


def test_nan_loss_names_phase_epoch_step_and_keeps_last_checkpoint(tmp_path: Path, datasets: Datasets) -> None:
    config = tiny_config()
    steps_per_epoch = 96 // 16
    model = poison(tiny_model(), at=steps_per_epoch + 3)  # epoch 2, step 3
    with pytest.raises(TrainingError) as info:
        Trainer(config, model, *datasets, tmp_path).fit()
    message = str(info.value)
    assert "phase 'regularize', epoch 2, step 3" in message and "\n" not in message
    assert str(tmp_path / CHECKPOINT) in message and "epoch 1" in message
    checkpoint = load_checkpoint(tmp_path / CHECKPOINT)
    assert checkpoint.state["epoch"] == 1 and not checkpoint.state["finished"]
    fresh = tiny_model(seed=5)
    fresh.load_state_dict(checkpoint.model)
    assert all(torch.isfinite(p).all() for p in fresh.parameters())


def test_reinitialized_finetune_keeps_zeros_and_resumes_exactly(tmp_path: Path, datasets: Datasets) -> None:
    base = tiny_config(epochs=0, finetune=2)
    config = dataclasses.replace(base, finetune=dataclasses.replace(base.finetune, reinitialize=True))

    def model(seed: int = 0) -> nn.Module:
        m = tiny_model(seed)
        with torch.no_grad():
            m.fc1.weight[:3] = 0  # removed neurons: must stay zero through the re-initialization
        return m

    straight = Trainer(config, model(), *datasets, tmp_path / "a").fit()
    assert bool((straight.model.fc1.weight[:3] == 0).all())

    with pytest.raises(Stop):  # stop inside fine-tuning: resuming must not re-initialize again
        Trainer(config, model(), *datasets, tmp_path / "b", on_epoch_end=stop_after(1)).fit()
    resumed = Trainer(config, model(seed=42), *datasets, tmp_path / "b").fit()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name

    plain = Trainer(base, model(), *datasets, tmp_path / "c").fit()
    assert not torch.equal(plain.model.fc2.weight, straight.model.fc2.weight)  # it did restart


def test_dataset_augmentation_runs_on_every_training_batch_and_resumes_exactly(
    tmp_path: Path, datasets: Datasets, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shrinkage.data import get_dataset_spec
    from shrinkage.train import trainer as trainer_module

    calls: list[int] = []

    def flip_some(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        calls.append(images.shape[0])
        flip = torch.rand(images.shape[0], generator=generator) < 0.5  # draws from the trainer's generator
        return torch.where(flip[:, None, None, None], images.flip(-1), images)

    spec = dataclasses.replace(get_dataset_spec(tiny_config().data.name), train_augment=flip_some)
    monkeypatch.setattr(trainer_module, "get_dataset_spec", lambda name: spec)
    config = tiny_config()
    straight = Trainer(config, tiny_model(), *datasets, tmp_path / "a").fit()
    batches_per_epoch = -(-len(datasets[0]) // config.data.batch_size)
    assert len(calls) == 3 * batches_per_epoch and sum(calls) == 3 * len(datasets[0])
    with pytest.raises(Stop):
        Trainer(config, tiny_model(), *datasets, tmp_path / "b", on_epoch_end=stop_after(1)).fit()
    resumed = Trainer(config, tiny_model(seed=42), *datasets, tmp_path / "b").fit()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    monkeypatch.setattr(trainer_module, "get_dataset_spec", get_dataset_spec)
    plain = Trainer(config, tiny_model(), *datasets, tmp_path / "c").fit()
    pairs = zip(plain.model.state_dict().values(), straight.model.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in pairs)  # the augmentation changed what was learned


def test_compiled_training_follows_eager_training_and_keeps_zeros(tmp_path: Path, datasets: Datasets) -> None:
    """``train.compile``: the same run through torch.compile ends at the eager run's weights
    up to float round-off, with the same zero groups, and its checkpoint holds the module's
    own (uncompiled) parameter names."""
    config = tiny_config()
    compiled = dataclasses.replace(config, train=dataclasses.replace(config.train, compile=True))
    eager_model, compiled_model = tiny_model(), tiny_model()
    eager = Trainer(config, eager_model, *datasets, tmp_path / "eager").fit()
    fast = Trainer(compiled, compiled_model, *datasets, tmp_path / "compiled").fit()
    assert type(compiled_model) is nn.Sequential
    for (name, a), (_, b) in zip(eager_model.state_dict().items(), compiled_model.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4, msg=name)
        assert torch.equal(a == 0, b == 0), name
    assert [r["test_accuracy"] for r in fast.rows] == pytest.approx([r["test_accuracy"] for r in eager.rows], abs=0.02)
    assert set(load_checkpoint(tmp_path / "compiled" / CHECKPOINT).model) == set(eager_model.state_dict())
