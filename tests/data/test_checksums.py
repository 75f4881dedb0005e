"""Tests for shrinkage.data.checksums and the IDX reader."""

from __future__ import annotations

import gzip
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from shrinkage.data import checksums
from shrinkage.data.checksums import KNOWN_FILES, expected_checksum, file_md5, verify_file
from shrinkage.data.idx import read_idx_images, read_idx_labels
from shrinkage.errors import DataError

BUNDLED = Path(checksums.__file__).parent / "files" / "mnist"
SMALL = "t10k-labels-idx1-ubyte.gz"


def test_table_covers_all_datasets() -> None:
    assert sum(name.startswith("mnist/") for name in KNOWN_FILES) == 4
    assert sum(name.startswith("fashion-mnist/") for name in KNOWN_FILES) == 4
    assert sum(name.startswith("cifar-10-batches-py/") for name in KNOWN_FILES) == 6
    assert KNOWN_FILES["cifar-10-batches-py/test_batch"].size is None
    assert expected_checksum("mnist/" + SMALL) == (4542, "ec29112dd5afa0611ce80d1b7f02629c")
    with pytest.raises(DataError, match="nope"):
        expected_checksum("mnist/nope.gz")


@pytest.mark.parametrize("name", sorted(p.name for p in BUNDLED.glob("*.gz")))
def test_bundled_files_match_table(name: str) -> None:
    size, md5 = KNOWN_FILES[f"mnist/{name}"]
    assert verify_file(BUNDLED / name, size, md5) == BUNDLED / name


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        verify_file(tmp_path / "absent.gz", 10, "0" * 32)
    message = str(info.value)
    assert "\n" not in message
    assert message == f"missing data file: {tmp_path / 'absent.gz'}"


def test_wrong_md5_names_file(tmp_path: Path) -> None:
    copy = tmp_path / SMALL
    data = bytearray((BUNDLED / SMALL).read_bytes())
    data[100] ^= 0xFF  # same size, different content
    copy.write_bytes(bytes(data))
    size, md5 = KNOWN_FILES["mnist/" + SMALL]
    with pytest.raises(DataError) as info:
        verify_file(copy, size, md5)
    message = str(info.value)
    assert "\n" not in message
    assert str(copy) in message and f"expected {md5}" in message and "delete it" in message


def test_wrong_size_names_file(tmp_path: Path) -> None:
    copy = tmp_path / SMALL
    copy.write_bytes((BUNDLED / SMALL).read_bytes()[:1000])
    size, md5 = KNOWN_FILES["mnist/" + SMALL]
    expected = f"corrupt data file .*{SMALL}: 1000 bytes, expected {size}"
    with pytest.raises(DataError, match=expected):
        verify_file(copy, size, md5)


def test_size_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"hello")
    verify_file(path, None, "5D41402ABC4B2A76B9719D911017C592")  # md5 compared case-insensitively


def test_verification_is_cached_per_mtime_and_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / SMALL
    shutil.copy(BUNDLED / SMALL, path)
    size, md5 = KNOWN_FILES["mnist/" + SMALL]
    verify_file(path, size, md5)

    calls: list[Path] = []

    def counting_md5(p: Path) -> str:
        calls.append(p)
        return file_md5(p)

    monkeypatch.setattr(checksums, "file_md5", counting_md5)
    verify_file(path, size, md5)
    assert calls == []  # served from the cache

    data = bytearray(path.read_bytes())
    data[50] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt"):
        verify_file(path, size, md5)  # rewritten file: checked again
    assert calls == [path]


def _write_idx(path: Path, magic: int, shape: tuple[int, ...], payload: bytes) -> None:
    header = struct.pack(f">i{len(shape)}i", magic, *shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + payload)


def test_idx_round_trip(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(2, 28, 28)
    _write_idx(tmp_path / "img.gz", 2051, (2, 28, 28), images.tobytes())
    _write_idx(tmp_path / "lab.gz", 2049, (2,), bytes([3, 7]))
    np.testing.assert_array_equal(read_idx_images(tmp_path / "img.gz"), images)
    np.testing.assert_array_equal(read_idx_labels(tmp_path / "lab.gz"), [3, 7])


def test_idx_bad_magic_names_file(tmp_path: Path) -> None:
    path = tmp_path / "lab.gz"
    _write_idx(path, 2051, (2,), bytes([3, 7]))
    with pytest.raises(DataError, match=re.escape(f"{path}: magic number 2051, expected 2049")):
        read_idx_labels(path)


def test_idx_size_mismatch_names_file(tmp_path: Path) -> None:
    path = tmp_path / "img.gz"
    _write_idx(path, 2051, (3, 28, 28), bytes(2 * 28 * 28))
    with pytest.raises(DataError) as info:
        read_idx_images(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_idx_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "img.gz"
    path.write_bytes(b"definitely not gzip data")
    with pytest.raises(DataError, match="not a valid gzip stream"):
        read_idx_images(path)


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "lab.gz"
    path.write_bytes((BUNDLED / SMALL).read_bytes()[:2000])
    with pytest.raises(DataError, match=re.escape(str(path))):
        read_idx_labels(path)
