"""Named datasets and what a model needs to know about them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from shrinkage.data.cifar import load_cifar10
from shrinkage.data.cifar_jpeg import CIFAR10_JPEG_TITLE, load_cifar10_jpeg, random_crop_flip
from shrinkage.data.dataset import ImageDataset
from shrinkage.data.mnist import Split, load_mnist
from shrinkage.errors import ConfigError

__all__ = ["DATASETS", "BatchAugment", "DatasetSpec", "get_dataset_spec"]

DataDir = str | os.PathLike[str] | None
#: ``augment(batch, generator) -> batch``: a random transform of a whole training batch.
BatchAugment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's name, input geometry, class count, loader and training augmentation.

    ``load(split, data_dir)`` returns the split as an :class:`ImageDataset`; ``data_dir``
    may be ``None`` to use ``$SHRINKAGE_DATA_DIR`` (or, for MNIST, the bundled files).
    ``title`` is how reports name the dataset (the name when left empty). ``train_augment``,
    when set, is meant for every training batch (on the batch's device, drawing from the
    trainer's generator); evaluation batches are used as loaded.
    """

    name: str
    in_channels: int
    image_size: int
    num_classes: int
    load: Callable[[Split, DataDir], ImageDataset]
    title: str = ""
    train_augment: BatchAugment | None = None

    def __post_init__(self) -> None:
        if not self.title:
            object.__setattr__(self, "title", self.name)  # frozen: the one way to fill a default


# Named functions rather than functools.partial: load_mnist's second positional
# parameter is ``variant``, so a partial called as load(split, data_dir) would misbind.
def _load_mnist(split: Split, data_dir: DataDir) -> ImageDataset:
    return load_mnist(split, variant="mnist", data_dir=data_dir)


def _load_fashion_mnist(split: Split, data_dir: DataDir) -> ImageDataset:
    return load_mnist(split, variant="fashion-mnist", data_dir=data_dir)


def _load_cifar10(split: Split, data_dir: DataDir) -> ImageDataset:
    return load_cifar10(split, data_dir=data_dir)


def _load_cifar10_jpeg(split: Split, data_dir: DataDir) -> ImageDataset:
    return load_cifar10_jpeg(split, data_dir=data_dir)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", 1, 28, 10, _load_mnist, title="MNIST"),
        DatasetSpec("fashion-mnist", 1, 28, 10, _load_fashion_mnist, title="Fashion-MNIST"),
        DatasetSpec("cifar10", 3, 32, 10, _load_cifar10, title="CIFAR-10"),
        # lossy JPEGs of CIFAR-10: accuracies on it are not comparable to published CIFAR-10 ones
        DatasetSpec(
            "cifar10-jpeg", 3, 32, 10, _load_cifar10_jpeg, title=CIFAR10_JPEG_TITLE, train_augment=random_crop_flip
        ),
    )
}


def get_dataset_spec(name: str) -> DatasetSpec:
    """Return the spec of dataset ``name`` or raise :class:`ConfigError` listing known ones."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})") from None
