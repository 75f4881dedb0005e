"""Tests for the MNIST / Fashion-MNIST loaders, the dataset registry and `batches`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from shrinkage.data import (
    DATASETS,
    ImageDataset,
    batches,
    get_dataset_spec,
    load_mnist,
)
from shrinkage.data import mnist as mnist_module
from shrinkage.errors import ConfigError, DataError

from support.datasets import data_dir_holding

BUNDLED = Path(mnist_module.__file__).parent / "files" / "mnist"
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the bundled MNIST files the default regardless of the caller's environment."""
    monkeypatch.delenv("SHRINKAGE_DATA_DIR", raising=False)


def _copy_test_split(data_dir: Path, variant: str = "mnist") -> Path:
    target = data_dir / variant
    target.mkdir(parents=True)
    for name in TEST_FILES:
        shutil.copy(BUNDLED / name, target / name)
    return target


def test_bundled_train_split(no_env: None) -> None:
    data = load_mnist("train")
    assert isinstance(data, ImageDataset)
    assert len(data) == 60000 and data.num_classes == 10 and data.name == "mnist/train"
    assert data.images.shape == (60000, 1, 28, 28) and data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64
    assert torch.bincount(data.labels, minlength=10).tolist() == TRAIN_COUNTS
    # Normalized with the training-set mean/std, so the train split is ~N(0, 1).
    assert abs(data.images.mean().item()) < 1e-3
    assert abs(data.images.std().item() - 1.0) < 1e-3
    assert data.images.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)


def test_bundled_test_split_and_cache(no_env: None) -> None:
    first = load_mnist("test")
    assert first.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(first.labels, minlength=10).sum().item() == 10000
    second = load_mnist("test")
    assert second.images is first.images  # served from the in-process cache, not re-decoded


def test_copy_in_data_dir_matches_bundled(tmp_path: Path, no_env: None) -> None:
    _copy_test_split(tmp_path)
    copy = load_mnist("test", data_dir=tmp_path)
    assert torch.equal(copy.images, load_mnist("test").images)


def test_missing_file_names_it(tmp_path: Path) -> None:
    target = _copy_test_split(tmp_path)
    (target / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_mnist("test", data_dir=tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and str(target) in message
    assert "\n" not in message


def test_corrupted_copy_names_it(tmp_path: Path) -> None:
    target = _copy_test_split(tmp_path)
    labels = target / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(labels.read_bytes())
    data[-20] ^= 0xFF
    labels.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        load_mnist("test", data_dir=tmp_path)
    message = str(info.value)
    assert message.startswith(f"corrupt data file {labels}: md5 ")
    assert "\n" not in message


def test_truncated_copy_names_it(tmp_path: Path) -> None:
    target = _copy_test_split(tmp_path)
    images = target / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:5000])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: 5000 bytes, expected 1648877"):
        load_mnist("test", data_dir=tmp_path)


def test_env_var_is_honored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = _copy_test_split(tmp_path)
    (target / "t10k-images-idx3-ubyte.gz").unlink()
    monkeypatch.setenv("SHRINKAGE_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="missing data file: .*t10k-images-idx3-ubyte.gz") as info:
        load_mnist("test")
    assert str(tmp_path) in str(info.value)


def test_env_var_without_mnist_dir_falls_back_to_bundled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHRINKAGE_DATA_DIR", str(tmp_path))
    assert len(load_mnist("test")) == 10000
    with pytest.raises(DataError, match="fashion-mnist"):
        load_mnist("test", variant="fashion-mnist")


def test_fashion_needs_a_directory(no_env: None) -> None:
    with pytest.raises(DataError, match="SHRINKAGE_DATA_DIR") as info:
        load_mnist("test", variant="fashion-mnist")
    assert "\n" not in str(info.value)


FASHION_DIR = data_dir_holding("fashion-mnist/t10k-labels-idx1-ubyte.gz")


@pytest.mark.skipif(
    FASHION_DIR is None, reason="neither SHRINKAGE_DATA_DIR nor ../shared/datasets holds fashion-mnist/"
)
def test_fashion_mnist_from_the_data_dir() -> None:
    data = load_mnist("test", variant="fashion-mnist", data_dir=FASHION_DIR)
    assert data.images.shape == (10000, 1, 28, 28) and data.name == "fashion-mnist/test"
    assert torch.bincount(data.labels, minlength=10).tolist() == [1000] * 10
    # Test-split statistics are close to (not equal to) the training ones used to normalize.
    assert abs(data.images.mean().item()) < 0.05
    assert abs(data.images.std().item() - 1.0) < 0.05


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown split 'val'"):
        load_mnist("val")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown MNIST variant 'kmnist'"):
        load_mnist("test", variant="kmnist")  # type: ignore[arg-type]


def test_dataset_registry(no_env: None) -> None:
    assert set(DATASETS) == {"mnist", "fashion-mnist", "cifar10", "cifar10-jpeg"}
    spec = get_dataset_spec("mnist")
    assert (spec.in_channels, spec.image_size, spec.num_classes) == (1, 28, 10)
    assert get_dataset_spec("cifar10").in_channels == 3
    assert len(spec.load("test", None)) == 10000
    with pytest.raises(ConfigError, match=r"unknown dataset 'imagenet' \(known: mnist, "):
        get_dataset_spec("imagenet")


def _toy(n: int = 23) -> ImageDataset:
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return ImageDataset(images=images, labels=torch.arange(n) % 3, num_classes=3, name="toy")


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_sample_once(shuffle: bool) -> None:
    data = _toy()
    seen: list[int] = []
    sizes: list[int] = []
    for x, y in batches(data, 5, shuffle=shuffle, generator=torch.Generator().manual_seed(0)):
        ids = x[:, 0, 0, 0].long()
        assert torch.equal(y, ids % 3)  # images and labels stay paired
        seen.extend(ids.tolist())
        sizes.append(len(y))
    assert sorted(seen) == list(range(23))
    assert sizes == [5, 5, 5, 5, 3]
    assert (seen == list(range(23))) is not shuffle


def test_batches_drop_last_and_determinism() -> None:
    data = _toy()
    assert [len(y) for _, y in batches(data, 5, shuffle=False, drop_last=True)] == [5, 5, 5, 5]

    def ids(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [int(v) for x, _ in batches(data, 4, True, gen) for v in x[:, 0, 0, 0]]

    assert ids(1) == ids(1)
    assert ids(1) != ids(2)
    gen = torch.Generator().manual_seed(3)
    epoch1 = [int(v) for x, _ in batches(data, 4, True, gen) for v in x[:, 0, 0, 0]]
    epoch2 = [int(v) for x, _ in batches(data, 4, True, gen) for v in x[:, 0, 0, 0]]
    assert epoch1 != epoch2  # a shared generator gives each epoch a new order


def test_batches_rejects_bad_batch_size() -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        next(batches(_toy(), 0, shuffle=False))


def test_dataset_validates_shapes() -> None:
    with pytest.raises(DataError, match="toy"):
        ImageDataset(torch.zeros(3, 1, 2, 2), torch.zeros(4), num_classes=2, name="toy")
