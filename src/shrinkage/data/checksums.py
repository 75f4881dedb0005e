"""Known data files and their checksums, and a cached file verifier.

Every file the loaders read is checked against the size and MD5 of the official
release (SHA-256 for archives that have no official MD5) before it is decoded, so a
truncated download or a hand-edited copy fails loudly with one line instead of
silently training on wrong data.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from shrinkage.errors import DataError

__all__ = [
    "KNOWN_FILES",
    "KNOWN_SHA256",
    "Checksum",
    "Sha256",
    "expected_checksum",
    "file_md5",
    "file_sha256",
    "verify_file",
    "verify_file_sha256",
]

logger = logging.getLogger(__name__)


class Checksum(NamedTuple):
    """Expected size in bytes (``None`` when unknown) and MD5 hex digest of a file."""

    size: int | None
    md5: str


class Sha256(NamedTuple):
    """Expected size in bytes (``None`` when unknown) and SHA-256 hex digest of a file."""

    size: int | None
    sha256: str


# Keys are paths relative to a data directory (``<data_dir>/<key>``).
# MNIST / Fashion-MNIST values are those of the official releases (as used by
# torchvision); CIFAR-10 MD5s are torchvision's, whose table lists no sizes.
KNOWN_FILES: dict[str, Checksum] = {
    "mnist/train-images-idx3-ubyte.gz": Checksum(9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "mnist/train-labels-idx1-ubyte.gz": Checksum(28881, "d53e105ee54ea40749a09fcbcd1e9432"),
    "mnist/t10k-images-idx3-ubyte.gz": Checksum(1648877, "9fb629c4189551a2d022fa330f9573f3"),
    "mnist/t10k-labels-idx1-ubyte.gz": Checksum(4542, "ec29112dd5afa0611ce80d1b7f02629c"),
    "fashion-mnist/train-images-idx3-ubyte.gz": Checksum(26421880, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "fashion-mnist/train-labels-idx1-ubyte.gz": Checksum(29515, "25c81989df183df01b3e8a0aad5dffbe"),
    "fashion-mnist/t10k-images-idx3-ubyte.gz": Checksum(4422102, "bef4ecab320f06d8554ea6380940ec79"),
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": Checksum(5148, "bb300cfdad3c16e7a12a480ee83cd310"),
    "cifar-10-batches-py/data_batch_1": Checksum(None, "c99cafc152244af753f735de768cd75f"),
    "cifar-10-batches-py/data_batch_2": Checksum(None, "d4bba439e000b95fd0a9bffe97cbabec"),
    "cifar-10-batches-py/data_batch_3": Checksum(None, "54ebc095f3ab1f0389bbae665268c751"),
    "cifar-10-batches-py/data_batch_4": Checksum(None, "634d18415352ddfa80567beed471001a"),
    "cifar-10-batches-py/data_batch_5": Checksum(None, "482c414d41f54cd18b22e5b47cb7c3cb"),
    "cifar-10-batches-py/test_batch": Checksum(None, "40351d587109b95175f43aff81a1287e"),
}

# Files identified by SHA-256, keyed like KNOWN_FILES. The CIFAR-10 (JPEG copy) is a
# re-encoding of CIFAR-10 as quality-75 JPEGs (see cifar_jpeg.py), not an official release.
KNOWN_SHA256: dict[str, Sha256] = {
    "cifar10-jpeg/cifar10-jpeg.tar.gz": Sha256(
        19433539, "45b041e867f5a40f79bfde38d3dd1fd511103d50068c1afecf6445e25234d4db"
    ),
}

_CHUNK = 1 << 20

# Successful verifications, keyed by (resolved path, mtime_ns, size, expected digest).
# A file that is rewritten gets a new mtime/size and is therefore checked again.
_verified: set[tuple[str, int, int, str]] = set()
_lock = threading.Lock()


def expected_checksum(relative_name: str) -> Checksum:
    """Return the known checksum of a file named relative to a data directory."""
    try:
        return KNOWN_FILES[relative_name]
    except KeyError:
        raise DataError(f"no known checksum for data file '{relative_name}'") from None


def _file_digest(path: Path, digest: hashlib._Hash) -> str:
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_md5(path: Path) -> str:
    """Return the MD5 hex digest of the file at ``path``, read in 1 MiB chunks."""
    return _file_digest(path, hashlib.md5(usedforsecurity=False))


def file_sha256(path: Path) -> str:
    """Return the SHA-256 hex digest of the file at ``path``, read in 1 MiB chunks."""
    return _file_digest(path, hashlib.sha256())


def verify_file(path: str | os.PathLike[str], size: int | None, md5: str) -> Path:
    """Check that ``path`` exists and matches ``size`` (if given) and ``md5``.

    Returns the path. Raises :class:`DataError` with a one-line message when the file is
    missing, unreadable or does not match. A successful check is remembered for the
    process (per path, mtime and size), so verifying the same file again is a ``stat``.
    """
    return _verify(Path(path), size, "md5", md5, lambda checked: file_md5(checked))


def verify_file_sha256(path: str | os.PathLike[str], size: int | None, sha256: str) -> Path:
    """:func:`verify_file` with a SHA-256 digest instead of an MD5 one."""
    return _verify(Path(path), size, "sha256", sha256, lambda checked: file_sha256(checked))


def _verify(path: Path, size: int | None, algorithm: str, expected: str, compute: Callable[[Path], str]) -> Path:
    # ``compute`` looks the digest function up at call time, so tests can count calls.
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataError(f"missing data file: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise DataError(f"data file is not a regular file: {path}")

    expected = expected.lower()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, expected)
    with _lock:
        if key in _verified:
            return path

    if size is not None and stat.st_size != size:
        raise DataError(
            f"corrupt data file {path}: {stat.st_size} bytes, expected {size} (delete it and copy a verified one)"
        )
    try:
        actual = compute(path)
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror or exc}") from None
    if actual != expected:
        raise DataError(
            f"corrupt data file {path}: {algorithm} {actual}, expected {expected} (delete it and copy a verified one)"
        )
    logger.debug("verified %s (%s %s)", path, algorithm, actual)
    with _lock:
        _verified.add(key)
    return path
