"""``target.select_after_epochs``: prune part-way through plain training, hold the zeros,
and leave the selection after training nothing more to remove."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import shrinkage
from shrinkage.config import RegularizationConfig, TargetConfig, load_config
from shrinkage.errors import ConfigError
from shrinkage.metrics import count_macs
from shrinkage.train import Trainer
from shrinkage.train.compress import compress

from .helpers import Stop, stop_after, tiny_config, tiny_model, without_time

Datasets = tuple[shrinkage.data.ImageDataset, shrinkage.data.ImageDataset]


def _config(select_after: int = 1, epochs: int = 3, macs: float = 0.5):
    plain = dataclasses.replace(tiny_config(epochs=epochs, finetune=0), regularization=RegularizationConfig())
    target = TargetConfig(macs=macs, select_after_epochs=select_after, recalibrate_batches=0)
    return dataclasses.replace(plain, target=target)


def test_pruned_after_the_given_epoch_and_held_at_zero_to_the_end(tmp_path: Path, datasets: Datasets) -> None:
    model = tiny_model()
    trainer = Trainer(_config(), model, *datasets, tmp_path)
    example = datasets[1].images[:4]
    dense_macs = count_macs(tiny_model(), (example,)).total
    rows = trainer.fit().rows
    held = [row["held_at_zero"] for row in rows]
    assert held[0] > 0 and held == [held[0]] * 3  # selected after epoch 1, nothing revived or added later
    assert trainer.early is not None and trainer.early.mask is not None
    for p, keep in trainer.early.mask._masks.values():
        assert torch.all(p[~keep] == 0)  # exactly zero after two more epochs of momentum and weight decay
    compacted = shrinkage.compact(model.eval(), (example,))
    assert count_macs(compacted, (example,)).total <= 0.5 * dense_macs
    torch.testing.assert_close(compacted(datasets[1].images), model(datasets[1].images), rtol=1e-5, atol=1e-6)
    assert trainer.early.details is not None and trainer.early.details["epoch"] == 1


@pytest.mark.parametrize("stop", [1, 2])
def test_resume_after_the_selection_equals_uninterrupted(tmp_path: Path, datasets: Datasets, stop: int) -> None:
    straight = Trainer(_config(), tiny_model(), *datasets, tmp_path / "a")
    rows = straight.fit().rows
    with pytest.raises(Stop):
        Trainer(_config(), tiny_model(), *datasets, tmp_path / "b", on_epoch_end=stop_after(stop)).fit()
    resumed = Trainer(_config(), tiny_model(), *datasets, tmp_path / "b")
    assert without_time(resumed.fit().rows) == without_time(rows)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_the_selection_after_training_finds_the_budget_already_met(tmp_path: Path, datasets: Datasets) -> None:
    config = _config()
    model = tiny_model()
    Trainer(config, model, *datasets, tmp_path / "run").fit()
    result = compress(config, model, datasets[0], datasets[1], tmp_path / "target")
    assert result["met"]
    # the groups chosen early are exactly zero, so they score lowest and go first: nothing else changes
    assert result["accuracy"]["selected"] == pytest.approx(result["accuracy"]["dense"], abs=1e-9)
    assert result["epochs"]["selected_after"] == 1 and result["epochs"]["total"] == 3
    assert "| trained (pruned to the budget after epoch 1) |" in (tmp_path / "target" / "target.md").read_text()


def test_select_after_epochs_must_leave_training_and_needs_plain_training() -> None:
    with pytest.raises(ConfigError, match=r"target\.select_after_epochs: must be below train\.epochs \(3\)"):
        _config(select_after=3)
    with pytest.raises(ConfigError, match=r"target\.select_after_epochs: early selection prunes a plainly trained"):
        dataclasses.replace(tiny_config(epochs=3), target=TargetConfig(macs=0.5, select_after_epochs=1))
    with pytest.raises(ConfigError, match=r"select_after_epochs: must be an integer in \[1, "):
        TargetConfig(macs=0.5, select_after_epochs=0)


def test_the_error_names_the_key_and_where_its_value_came_from() -> None:
    path = Path(__file__).parents[2] / "configs" / "cifar10_resnet20_baseline.yaml"
    sets = ["target.macs=0.5", "target.select_after_epochs=20"]
    with pytest.raises(ConfigError, match=r"target\.select_after_epochs: must be below train\.epochs \(20\)") as error:
        load_config(path, sets)
    assert str(error.value).startswith("--set target.select_after_epochs=20: ")
    assert load_config(path, ["target.macs=0.5", "target.select_after_epochs=4"]).target.select_after_epochs == 4
