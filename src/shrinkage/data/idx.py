"""Readers for gzip-compressed IDX files (the MNIST / Fashion-MNIST format).

An IDX file is a big-endian header -- a 4-byte magic number whose last byte is the
number of dimensions, then one 4-byte size per dimension -- followed by the raw data.
Only the unsigned-byte variants used by MNIST are supported: magic 2051 for image
files (N, rows, cols) and 2049 for label files (N,).
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from shrinkage.errors import DataError

__all__ = ["IMAGES_MAGIC", "LABELS_MAGIC", "read_idx", "read_idx_images", "read_idx_labels"]

logger = logging.getLogger(__name__)

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension


def _decompress(path: Path) -> bytes:
    """Return the decompressed content of ``path`` or raise a one-line DataError."""
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise DataError(f"missing data file: {path}") from None
    except (OSError, EOFError, zlib.error) as exc:
        # gzip raises BadGzipFile (an OSError), EOFError on truncation, zlib.error on bad data.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"corrupt data file {path}: not a valid gzip stream ({reason})") from None


def read_idx(path: str | os.PathLike[str], expected_magic: int) -> np.ndarray:
    """Decode the gzip'd IDX file at ``path`` into a uint8 array of the header's shape.

    Raises :class:`DataError` naming the file if it cannot be decompressed, its magic
    number differs from ``expected_magic``, or its length disagrees with the header.
    """
    path = Path(path)
    raw = _decompress(path)
    ndim = expected_magic & 0xFF
    header_len = 4 * (1 + ndim)
    if len(raw) < header_len:
        raise DataError(
            f"corrupt IDX file {path}: {len(raw)} bytes, shorter than its {header_len}-byte header"
        )
    (magic,) = struct.unpack(">i", raw[:4])
    if magic != expected_magic:
        raise DataError(f"corrupt IDX file {path}: magic number {magic}, expected {expected_magic}")
    shape = struct.unpack(f">{ndim}i", raw[4:header_len])
    if any(dim < 0 for dim in shape):
        raise DataError(f"corrupt IDX file {path}: negative size in header {shape}")
    expected_len = header_len + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected_len:
        raise DataError(
            f"corrupt IDX file {path}: {len(raw) - header_len} data bytes, header {shape} "
            f"needs {expected_len - header_len}"
        )
    # frombuffer is zero-copy over the bytes object; the array is read-only, which is
    # fine because callers convert it (to float or int64) before use.
    array = np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)
    logger.debug("decoded %s: shape %s", path, shape)
    return array


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX image file: uint8 array of shape (N, rows, cols)."""
    return read_idx(path, IMAGES_MAGIC)


def read_idx_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX label file: uint8 array of shape (N,)."""
    return read_idx(path, LABELS_MAGIC)
