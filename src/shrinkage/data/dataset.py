"""An in-memory image classification dataset and a fast batch iterator over it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from shrinkage.errors import ConfigError, DataError

__all__ = ["ImageDataset", "batches"]


@dataclass(frozen=True)
class ImageDataset:
    """A whole split held as two tensors.

    Attributes:
        images: float tensor of shape (N, C, H, W), already normalized.
        labels: int64 tensor of shape (N,) with values in ``[0, num_classes)``.
        num_classes: number of classes.
        name: human-readable name, e.g. ``"mnist/train"``.

    The tensors may be shared with the loaders' in-process cache: treat them as
    read-only (clone before modifying in place).
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise DataError(
                f"dataset {self.name}: images must be (N, C, H, W), "
                f"got {tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise DataError(
                f"dataset {self.name}: {self.images.shape[0]} images but labels of shape "
                f"{tuple(self.labels.shape)}"
            )
        if self.num_classes < 1:
            raise DataError(
                f"dataset {self.name}: num_classes must be positive, got {self.num_classes}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one image."""
        channels, height, width = self.images.shape[1:]
        return int(channels), int(height), int(width)


def batches(
    dataset: ImageDataset,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)`` batches covering the dataset once (one epoch).

    With ``shuffle`` the order is a fresh permutation drawn from ``generator`` (so a
    seeded generator gives a reproducible order); without it batches are contiguous
    views in dataset order. With ``drop_last`` a final short batch is skipped.

    Why not ``torch.utils.data.DataLoader``: the splits used here fit in memory as
    single tensors, and a DataLoader would fetch every sample through ``__getitem__``
    and re-stack them with ``default_collate`` -- tens of microseconds of Python per
    sample, which dominates the step time of the small models trained here. Slicing
    (or one ``index_select`` per batch) costs one tensor operation per batch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    total = len(dataset)
    stop = total - total % batch_size if drop_last else total
    if shuffle:
        # randperm on the CPU: a CPU generator cannot drive a CUDA randperm.
        order = torch.randperm(total, generator=generator)
        if dataset.images.device.type != "cpu":
            order = order.to(dataset.images.device)
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            yield dataset.images.index_select(0, index), dataset.labels.index_select(0, index)
    else:
        for start in range(0, stop, batch_size):
            end = start + batch_size
            yield dataset.images[start:end], dataset.labels[start:end]
