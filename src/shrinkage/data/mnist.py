"""MNIST and Fashion-MNIST loaders.

Where the files are looked for, first match wins:

1. ``data_dir`` passed by the caller: ``<data_dir>/<variant>/*.gz``.
2. The ``SHRINKAGE_DATA_DIR`` environment variable: ``$SHRINKAGE_DATA_DIR/<variant>/*.gz``.
   For MNIST only, if that directory has no ``mnist/`` sub-directory at all, the
   bundled copy is used (the variable is shared by all datasets, and may have been set
   just for Fashion-MNIST or CIFAR-10).
3. MNIST only: the verified copy bundled with the package (``shrinkage/data/files/mnist``).

Every file is checked against its official size and MD5 before it is decoded.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from shrinkage.data.checksums import expected_checksum, verify_file
from shrinkage.data.dataset import ImageDataset
from shrinkage.data.idx import read_idx_images, read_idx_labels
from shrinkage.errors import ConfigError, DataError

__all__ = [
    "DATA_DIR_ENV",
    "MNIST_STATS",
    "MnistVariant",
    "Split",
    "load_mnist",
    "resolve_data_dir",
]

logger = logging.getLogger(__name__)

Split = Literal["train", "test"]
MnistVariant = Literal["mnist", "fashion-mnist"]

DATA_DIR_ENV = "SHRINKAGE_DATA_DIR"

# (mean, std) of the training pixels scaled to [0, 1].
MNIST_STATS: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}

_PREFIX = {"train": "train", "test": "t10k"}
_BUNDLED_DIR = Path(__file__).resolve().parent / "files"

# Decoded, normalized tensors keyed by the variant, split and the identity (path,
# mtime, size) of the two files, so a second load is a dictionary lookup while an
# edited file is decoded (and verified) again.
_cache: dict[tuple[object, ...], tuple[torch.Tensor, torch.Tensor]] = {}
_cache_lock = threading.Lock()


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """Return ``data_dir``, else ``$SHRINKAGE_DATA_DIR``, else ``None``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else None


def _variant_dir(variant: str, data_dir: str | os.PathLike[str] | None) -> Path:
    """Directory holding the four .gz files of ``variant`` (see the module docstring)."""
    root = resolve_data_dir(data_dir)
    if root is not None:
        candidate = root / variant
        if data_dir is not None or variant != "mnist" or candidate.exists():
            return candidate
        logger.debug("%s has no mnist/ directory; using the bundled MNIST files", root)
    if variant == "mnist":
        return _BUNDLED_DIR / "mnist"
    raise DataError(
        f"no data directory for {variant}: pass data_dir or set {DATA_DIR_ENV} "
        f"(expects <dir>/{variant}/*.gz)"
    )


def _file_identity(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _load_arrays(variant: str, split: str, directory: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify, decode and normalize one split; cached per file identity."""
    names = [f"{_PREFIX[split]}-images-idx3-ubyte.gz", f"{_PREFIX[split]}-labels-idx1-ubyte.gz"]
    paths = [directory / name for name in names]
    for name, path in zip(names, paths):
        checksum = expected_checksum(f"{variant}/{name}")
        verify_file(path, checksum.size, checksum.md5)  # raises on missing / corrupt files

    key = (variant, split, *(_file_identity(path) for path in paths))
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached

    raw_images = read_idx_images(paths[0])
    raw_labels = read_idx_labels(paths[1])
    if raw_images.shape[1:] != (28, 28):
        raise DataError(
            f"corrupt IDX file {paths[0]}: images of size {raw_images.shape[1:]}, expected (28, 28)"
        )
    if raw_labels.shape[0] != raw_images.shape[0]:
        raise DataError(
            f"corrupt IDX file {paths[1]}: {raw_labels.shape[0]} labels "
            f"for {raw_images.shape[0]} images"
        )
    if raw_labels.size and int(raw_labels.max()) > 9:
        raise DataError(f"corrupt IDX file {paths[1]}: label {int(raw_labels.max())} outside 0-9")

    mean, std = MNIST_STATS[variant]
    # Normalize in float32 once here rather than per batch: the whole split is small.
    images = torch.from_numpy(raw_images.astype(np.float32)).div_(255.0)
    images = images.sub_(mean).div_(std).unsqueeze_(1)
    labels = torch.from_numpy(raw_labels.astype(np.int64))
    logger.info("loaded %s/%s from %s: %d images", variant, split, directory, labels.shape[0])
    with _cache_lock:
        _cache[key] = (images, labels)
    return images, labels


def load_mnist(
    split: Split,
    variant: MnistVariant = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
) -> ImageDataset:
    """Load a split of MNIST or Fashion-MNIST.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        variant: ``"mnist"`` or ``"fashion-mnist"``.
        data_dir: directory containing ``<variant>/*.gz``; see the module docstring
            for the fallbacks when it is ``None``.

    Returns:
        An :class:`ImageDataset` with float32 images of shape (N, 1, 28, 28), normalized
        with the dataset's mean and std, and int64 labels. Loading the same files twice
        in one process returns the cached tensors (treat them as read-only).

    Raises:
        ConfigError: unknown ``split`` or ``variant``.
        DataError: a file is missing, corrupt, or (Fashion-MNIST) no directory is set.
    """
    if split not in _PREFIX:
        raise ConfigError(f"unknown split '{split}' (known: {', '.join(_PREFIX)})")
    if variant not in MNIST_STATS:
        raise ConfigError(f"unknown MNIST variant '{variant}' (known: {', '.join(MNIST_STATS)})")
    directory = _variant_dir(variant, data_dir)
    images, labels = _load_arrays(variant, split, directory)
    return ImageDataset(images=images, labels=labels, num_classes=10, name=f"{variant}/{split}")
