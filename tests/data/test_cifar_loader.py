"""Tests for the CIFAR-10 loader, on small synthetic batch files."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from shrinkage.data import load_cifar10
from shrinkage.data.cifar import CIFAR10_FILES, CIFAR10_MEAN, CIFAR10_STD
from shrinkage.errors import ConfigError, DataError

PER_FILE = 10


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _fake_batch(seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fake batch",
        b"labels": [int(v) for v in rng.integers(0, 10, PER_FILE)],
        b"data": rng.integers(0, 256, (PER_FILE, 3072), dtype=np.uint8),
        b"filenames": [b"img%d.png" % i for i in range(PER_FILE)],
    }


@pytest.fixture
def cifar_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A data dir with six fake batches, and the md5 of each (the override table)."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = CIFAR10_FILES["train"] + CIFAR10_FILES["test"]
    for seed, name in enumerate(names):
        with open(folder / name, "wb") as handle:
            # Protocol 2 is what the official (Python 2) files use; vary it for coverage.
            pickle.dump(_fake_batch(seed), handle, protocol=(2, 4, 5)[seed % 3])
    return tmp_path, {name: _md5(folder / name) for name in names}


def test_official_checksum_mismatch_names_file(cifar_dir: tuple[Path, dict[str, str]]) -> None:
    root, _ = cifar_dir
    with pytest.raises(DataError) as info:
        load_cifar10("test", data_dir=root)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"corrupt data file {root / 'cifar-10-batches-py' / 'test_batch'}")
    assert "expected 40351d587109b95175f43aff81a1287e" in message


def test_loads_with_overridden_checksums(cifar_dir: tuple[Path, dict[str, str]]) -> None:
    root, sums = cifar_dir
    train = load_cifar10("train", data_dir=root, checksums=sums)
    assert train.images.shape == (5 * PER_FILE, 3, 32, 32) and train.images.dtype == torch.float32
    assert train.labels.dtype == torch.int64 and train.num_classes == 10
    assert train.name == "cifar10/train"

    batches = [_fake_batch(seed) for seed in range(5)]
    expected_labels = [v for b in batches for v in b[b"labels"]]  # type: ignore[attr-defined]
    assert train.labels.tolist() == expected_labels

    raw = _fake_batch(0)[b"data"].reshape(PER_FILE, 3, 32, 32)  # type: ignore[union-attr]
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    expected = (torch.from_numpy(raw).float() / 255 - mean) / std
    torch.testing.assert_close(train.images[:PER_FILE], expected)

    test = load_cifar10("test", data_dir=root, checksums=sums)
    assert len(test) == PER_FILE
    assert load_cifar10("test", data_dir=root, checksums=sums).images is test.images  # cached


def test_channel_layout(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.repeat(np.array([0, 128, 255], dtype=np.uint8), 1024)[None, :]  # R, G, B planes
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": data, b"labels": [4]}, handle)
    image = load_cifar10("test", tmp_path, {"test_batch": _md5(folder / "test_batch")}).images[0]
    for channel, value in enumerate((0, 128, 255)):
        target = (value / 255 - CIFAR10_MEAN[channel]) / CIFAR10_STD[channel]
        assert torch.allclose(image[channel], torch.full((32, 32), target), atol=1e-5)


def test_legacy_numpy_module_name(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    payload = pickle.dumps(_fake_batch(7), protocol=2)
    # The official files name numpy.core (NumPy < 2); GLOBAL opcodes are plain text.
    legacy = payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert legacy != payload
    (folder / "test_batch").write_bytes(legacy)
    data = load_cifar10("test", tmp_path, {"test_batch": _md5(folder / "test_batch")})
    assert data.labels.tolist() == _fake_batch(7)[b"labels"]


def test_env_var_and_missing_dir(
    cifar_dir: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, sums = cifar_dir
    monkeypatch.setenv("SHRINKAGE_DATA_DIR", str(root))
    assert len(load_cifar10("test", checksums=sums)) == PER_FILE
    monkeypatch.delenv("SHRINKAGE_DATA_DIR")
    with pytest.raises(DataError, match="SHRINKAGE_DATA_DIR"):
        load_cifar10("test")


def test_missing_batch_names_it(cifar_dir: tuple[Path, dict[str, str]]) -> None:
    root, sums = cifar_dir
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=re.escape("missing data file: ") + ".*data_batch_3$"):
        load_cifar10("train", data_dir=root, checksums=sums)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    path = folder / "test_batch"
    with open(path, "wb") as handle:
        pickle.dump({b"data": _Exploit(marker), b"labels": [0]}, handle)
    # A matching checksum gets the file past verification, so the unpickler is what stops it.
    with pytest.raises(DataError) as info:
        load_cifar10("test", data_dir=tmp_path, checksums={"test_batch": _md5(path)})
    message = str(info.value)
    assert "refusing to unpickle" in message and "system" in message and str(path) in message
    assert "\n" not in message
    assert not marker.exists()


def test_other_globals_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    path = folder / "test_batch"
    path.write_bytes(pickle.dumps({b"data": eval, b"labels": [0]}))  # references builtins.eval
    with pytest.raises(DataError, match=r"refusing to unpickle builtins\.eval"):
        load_cifar10("test", data_dir=tmp_path, checksums={"test_batch": _md5(path)})


def test_malformed_batch_names_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    path = folder / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=re.escape(f"corrupt CIFAR-10 batch {path}: 'data'")):
        load_cifar10("test", data_dir=tmp_path, checksums={"test_batch": _md5(path)})
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match=re.escape(f"corrupt CIFAR-10 batch {path}")):
        load_cifar10("test", data_dir=tmp_path, checksums={"test_batch": _md5(path)})


def test_bad_arguments(cifar_dir: tuple[Path, dict[str, str]]) -> None:
    root, sums = cifar_dir
    with pytest.raises(ConfigError, match="unknown split 'valid'"):
        load_cifar10("valid", data_dir=root)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="data_batch_1"):
        load_cifar10("train", data_dir=root, checksums={"test_batch": sums["test_batch"]})
