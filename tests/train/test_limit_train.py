"""data.limit_train: a smoke-test subset that still holds every class."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from shrinkage.data import DatasetSpec, ImageDataset
from shrinkage.train import setup

from .helpers import tiny_config


def test_limit_train_takes_evenly_spaced_samples_from_a_split_stored_class_by_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    labels = torch.arange(10).repeat_interleave(100)  # 100 of class 0, then 100 of class 1, ...

    def load(split: str, data_dir: object) -> ImageDataset:
        return ImageDataset(torch.arange(1000.0).view(1000, 1, 1, 1), labels, 10, split)

    monkeypatch.setattr(setup, "get_dataset_spec", lambda name: DatasetSpec("sorted", 1, 1, 10, load))
    config = tiny_config()
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, limit_train=50))
    train, test = setup.load_datasets(config, torch.device("cpu"))
    assert len(train) == 50 and len(test) == 1000
    assert torch.bincount(train.labels, minlength=10).tolist() == [5] * 10
    assert train.images.flatten().unique().numel() == 50  # distinct samples, images matching their labels
    assert torch.equal(labels[train.images.flatten().long()], train.labels)
