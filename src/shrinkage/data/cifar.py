"""CIFAR-10 loader for the official "python version" batches.

The batches are pickles, and unpickling runs whatever callable the file names. They are
therefore read with an unpickler that resolves only the few globals a CIFAR batch needs
(NumPy array reconstruction and a handful of builtins) and refuses everything else, on
top of the MD5 check against the official release.

Layout: ``<data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch}``, where
``data_dir`` is the argument or ``$SHRINKAGE_DATA_DIR``. CIFAR-10 is not bundled.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from shrinkage.data.checksums import KNOWN_FILES, verify_file
from shrinkage.data.dataset import ImageDataset
from shrinkage.data.mnist import DATA_DIR_ENV, Split, resolve_data_dir
from shrinkage.errors import ConfigError, DataError

__all__ = ["CIFAR10_FILES", "CIFAR10_MEAN", "CIFAR10_STD", "load_cifar10", "read_cifar_batch"]

logger = logging.getLogger(__name__)

CIFAR_SUBDIR = "cifar-10-batches-py"
CIFAR10_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# (module, name) pairs a CIFAR batch may reference. Python 2 pickles name
# "__builtin__", which pickle's fix_imports maps to "builtins" before find_class.
_ALLOWED_GLOBALS = frozenset(
    {
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "bytes"),
        ("builtins", "str"),
        ("builtins", "int"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),  # protocols 0-4
        ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    }
)

_cache: dict[tuple[object, ...], tuple[torch.Tensor, torch.Tensor]] = {}
_cache_lock = threading.Lock()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        # encoding="bytes": the official batches were pickled by Python 2, whose str
        # objects (keys, file names, the array buffer) must stay bytes.
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        # NumPy 2 moved numpy.core to numpy._core; old pickles use the old name.
        canonical = module
        if module.startswith("numpy.core"):
            canonical = "numpy._core" + module[len("numpy.core") :]
        if (canonical, name) not in _ALLOWED_GLOBALS:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self._path}: "
                "not allowed in a CIFAR-10 batch"
            )
        if canonical.startswith("numpy._core") and not hasattr(np, "_core"):
            canonical = "numpy.core" + canonical[len("numpy._core") :]  # NumPy 1.x
        return super().find_class(canonical, name)


def _get(batch: Mapping[Any, Any], key: str) -> Any:
    """Look up ``key`` stored as bytes (official files) or str."""
    if key.encode() in batch:
        return batch[key.encode()]
    return batch.get(key)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file: uint8 images (N, 3, 32, 32) and int64 labels (N,).

    The file is not checksum-verified here; :func:`load_cifar10` does that first.
    """
    try:
        with open(path, "rb") as handle:
            batch = _RestrictedUnpickler(handle, path).load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"missing data file: {path}") from None
    except Exception as exc:  # any unpickling failure means a damaged file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"corrupt CIFAR-10 batch {path}: {reason}") from None
    if not isinstance(batch, dict):
        raise DataError(
            f"corrupt CIFAR-10 batch {path}: expected a dict, got {type(batch).__name__}"
        )
    data, labels = _get(batch, "data"), _get(batch, "labels")
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3072
    ):
        raise DataError(
            f"corrupt CIFAR-10 batch {path}: 'data' must be a uint8 (N, 3072) array, "
            f"got {getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        )
    if not isinstance(labels, list) or len(labels) != data.shape[0]:
        raise DataError(
            f"corrupt CIFAR-10 batch {path}: 'labels' must be a list of {data.shape[0]} ints"
        )
    if not all(isinstance(label, int) and 0 <= label < 10 for label in labels):
        raise DataError(f"corrupt CIFAR-10 batch {path}: 'labels' must be ints in 0-9")
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32.
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _expected_md5(name: str, checksums: Mapping[str, str] | None) -> str:
    if checksums is None:
        return KNOWN_FILES[f"{CIFAR_SUBDIR}/{name}"].md5
    if name not in checksums:
        raise ConfigError(f"checksums has no entry for CIFAR-10 file '{name}'")
    return checksums[name]


def load_cifar10(
    split: Split,
    data_dir: str | os.PathLike[str] | None = None,
    checksums: Mapping[str, str] | None = None,
) -> ImageDataset:
    """Load a split of CIFAR-10 (python version).

    Args:
        split: ``"train"`` (data_batch_1..5) or ``"test"`` (test_batch).
        data_dir: directory containing ``cifar-10-batches-py/``; defaults to
            ``$SHRINKAGE_DATA_DIR``.
        checksums: expected MD5 per batch file name (e.g. ``{"test_batch": "..."}``),
            replacing the official values; every file of the split needs an entry.
            Meant for tests with synthetic batches.

    Returns:
        An :class:`ImageDataset` with float32 images (N, 3, 32, 32) normalized per
        channel and int64 labels. Repeated loads of unchanged files hit a cache.

    Raises:
        ConfigError: unknown ``split`` or incomplete ``checksums``.
        DataError: no directory set, or a batch is missing, corrupt or unsafe.
    """
    if split not in CIFAR10_FILES:
        raise ConfigError(f"unknown split '{split}' (known: {', '.join(CIFAR10_FILES)})")
    root = resolve_data_dir(data_dir)
    if root is None:
        raise DataError(
            f"no data directory for cifar10: pass data_dir or set {DATA_DIR_ENV} "
            f"(expects <dir>/{CIFAR_SUBDIR}/)"
        )
    directory = root / CIFAR_SUBDIR
    paths = [directory / name for name in CIFAR10_FILES[split]]
    identity: list[tuple[object, ...]] = []
    for path in paths:
        md5 = _expected_md5(path.name, checksums)
        verify_file(path, None, md5)
        stat = path.stat()
        identity.append((str(path.resolve()), stat.st_mtime_ns, stat.st_size))

    key = (split, *identity)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is None:
        parts = [read_cifar_batch(path) for path in paths]
        raw = np.concatenate([images for images, _ in parts])
        images = torch.from_numpy(raw).to(torch.float32).div_(255.0)
        mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
        images = images.sub_(mean).div_(std)
        labels = torch.from_numpy(np.concatenate([labels for _, labels in parts]))
        cached = (images, labels)
        logger.info("loaded cifar10/%s from %s: %d images", split, directory, labels.shape[0])
        with _cache_lock:
            _cache[key] = cached
    images, labels = cached
    return ImageDataset(images=images, labels=labels, num_classes=10, name=f"cifar10/{split}")
