"""Named datasets and what a model needs to know about them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from shrinkage.data.cifar import load_cifar10
from shrinkage.data.dataset import ImageDataset
from shrinkage.data.mnist import Split, load_mnist
from shrinkage.errors import ConfigError

__all__ = ["DATASETS", "DatasetSpec", "get_dataset_spec"]

DataDir = str | os.PathLike[str] | None


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset's name, input geometry, class count and loader.

    ``load(split, data_dir)`` returns the split as an :class:`ImageDataset`; ``data_dir``
    may be ``None`` to use ``$SHRINKAGE_DATA_DIR`` (or, for MNIST, the bundled files).
    """

    name: str
    in_channels: int
    image_size: int
    num_classes: int
    load: Callable[[Split, DataDir], ImageDataset]


# Named functions rather than functools.partial: load_mnist's second positional
# parameter is ``variant``, so a partial called as load(split, data_dir) would misbind.
def _load_mnist(split: Split, data_dir: DataDir) -> ImageDataset:
    return load_mnist(split, variant="mnist", data_dir=data_dir)


def _load_fashion_mnist(split: Split, data_dir: DataDir) -> ImageDataset:
    return load_mnist(split, variant="fashion-mnist", data_dir=data_dir)


def _load_cifar10(split: Split, data_dir: DataDir) -> ImageDataset:
    return load_cifar10(split, data_dir=data_dir)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mnist", in_channels=1, image_size=28, num_classes=10, load=_load_mnist),
        DatasetSpec(
            "fashion-mnist", in_channels=1, image_size=28, num_classes=10, load=_load_fashion_mnist
        ),
        DatasetSpec("cifar10", in_channels=3, image_size=32, num_classes=10, load=_load_cifar10),
    )
}


def get_dataset_spec(name: str) -> DatasetSpec:
    """Return the spec of dataset ``name`` or raise :class:`ConfigError` listing known ones."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})") from None
