"""Tests for the CIFAR-10 (JPEG copy) loader, its cache and the batched augmentation.

A small archive of the real layout (``train|test/<class>/NNNN.jpg`` in a tar.gz) is written
by the tests, its SHA-256 passed in; one slow test reads the real archive when
``$SHRINKAGE_DATA_DIR`` holds it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
import sys
import tarfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shrinkage.config import parse_config
from shrinkage.data import cifar_jpeg, get_dataset_spec
from shrinkage.data.checksums import KNOWN_SHA256, Sha256
from shrinkage.data.cifar_jpeg import (
    CIFAR10_CLASSES,
    CIFAR10_JPEG_ARCHIVE,
    channel_stats,
    default_cache_dir,
    load_cifar10_jpeg,
    normalize,
    random_crop_flip,
    read_cifar10_jpeg,
)
from shrinkage.errors import ConfigError, DataError

from support.datasets import data_dir_holding

torchvision_io = pytest.importorskip("torchvision.io")
# the tests encode and decode with torchvision, whose image codecs warn that they are deprecated
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 2
LOGGER = "shrinkage.data.cifar_jpeg"


@dataclass
class TinyArchive:
    data_dir: Path
    path: Path
    sha256: str
    # the expected pixels (decoded from the written bytes) and labels, in loader order
    images: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]


def _encode(image: torch.Tensor) -> bytes:
    return bytes(torchvision_io.encode_jpeg(image, quality=90).numpy())


def _decode(data: bytes) -> torch.Tensor:
    return torchvision_io.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))


def _smooth_images(count: int, generator: torch.Generator, size: int = 32) -> torch.Tensor:
    # upsampled noise: JPEG keeps such images close, so the decoders agree closely too
    coarse = torch.rand(count, 3, 4, 4, generator=generator) * 255
    return F.interpolate(coarse, size=(size, size), mode="bilinear").to(torch.uint8)


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for directory in sorted({name.rsplit("/", 1)[0] for name, _ in members}):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_archive(
    root: Path, seed: int = 0, extra: list[tuple[str, bytes]] | None = None, size: int = 32
) -> TinyArchive:
    """Write ``<root>/cifar10-jpeg/cifar10-jpeg.tar.gz`` with a few images per class and split."""
    generator = torch.Generator().manual_seed(seed)
    members: list[tuple[str, bytes]] = []
    images: dict[str, torch.Tensor] = {}
    labels: dict[str, torch.Tensor] = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        decoded, split_labels = [], []
        sources = iter(_smooth_images(10 * per_class, generator, size))
        for label, name in enumerate(CIFAR10_CLASSES):
            for index in range(per_class):
                data = _encode(next(sources))
                members.append((f"{split}/{name}/{index:04d}.jpg", data))
                decoded.append(_decode(data))
                split_labels.append(label)
        images[split] = torch.stack(decoded)
        labels[split] = torch.tensor(split_labels)
    members += extra or []
    random.Random(seed).shuffle(members)  # the loader orders by class and name, not by archive order
    path = root / CIFAR10_JPEG_ARCHIVE
    _write_tar(path, members)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return TinyArchive(root, path, sha256, images, labels)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No decoded archive kept from another test; caches go to the test's directory."""
    monkeypatch.setattr(cifar_jpeg, "_memo", {})
    monkeypatch.setenv("SHRINKAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SHRINKAGE_DATA_DIR", raising=False)


@pytest.fixture
def tiny(tmp_path: Path) -> TinyArchive:
    return make_archive(tmp_path / "data")


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Each archive decoded, in order."""
    calls: list[Path] = []
    original = cifar_jpeg._decode_archive

    def counting(archive: Path) -> dict[str, torch.Tensor]:
        calls.append(archive)
        return original(archive)

    monkeypatch.setattr(cifar_jpeg, "_decode_archive", counting)
    return calls


def _forget_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a new process: the next load reads the cache file."""
    monkeypatch.setattr(cifar_jpeg, "_memo", {})


def _cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache").glob("*.safetensors"))


def test_loads_both_splits_in_class_order(tiny: TinyArchive) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read_cifar10_jpeg(tiny.data_dir, sha256=tiny.sha256)
    assert [str(w.message) for w in caught] == []  # not one warning per decoded image
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        images, labels = data.split(split)  # type: ignore[arg-type]
        assert images.dtype == torch.uint8 and images.shape == (10 * per_class, 3, 32, 32)
        assert labels.dtype == torch.int64
        assert labels.tolist() == [label for label in range(10) for _ in range(per_class)]
        assert torch.equal(images, tiny.images[split])
        assert torch.equal(labels, tiny.labels[split])


def test_dataset_is_normalized_with_the_training_split_stats(tiny: TinyArchive) -> None:
    train = load_cifar10_jpeg("train", tiny.data_dir, sha256=tiny.sha256)
    test = load_cifar10_jpeg("test", tiny.data_dir, sha256=tiny.sha256)
    assert train.name == "cifar10-jpeg/train" and train.num_classes == 10
    assert train.images.dtype == torch.float32 and train.images.shape == (30, 3, 32, 32)
    # the training split is exactly standardized per channel ...
    per_channel = train.images.double().transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1, correction=0), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    # ... and the test split with the same (training) mean and std
    raw = tiny.images["train"].double().div(255).transpose(0, 1).reshape(3, -1)
    mean, std = raw.mean(1).view(1, 3, 1, 1), raw.std(1, correction=0).view(1, 3, 1, 1)
    expected = (tiny.images["test"].double() / 255 - mean) / std
    torch.testing.assert_close(test.images.double(), expected, atol=1e-5, rtol=0)
    assert torch.equal(test.labels, tiny.labels["test"])


def test_channel_stats_and_normalize_match_numpy() -> None:
    images = torch.randint(0, 256, (7, 3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mean, std = channel_stats(images)
    pixels = images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 2, 3)), rtol=1e-12)
    normalized = normalize(images, mean, std)
    assert normalized.dtype == torch.float32
    reference = (pixels - np.array(mean).reshape(1, 3, 1, 1)) / np.array(std).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(normalized.numpy(), reference, atol=1e-5)


def test_cache_is_written_once_then_reused(
    tiny: TinyArchive, tmp_path: Path, decode_calls: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = read_cifar10_jpeg(tiny.data_dir, sha256=tiny.sha256)
    assert decode_calls == [tiny.path]
    (cache,) = _cache_files(tmp_path)
    assert cache.name == f"cifar10-jpeg-{tiny.sha256[:16]}.safetensors"
    assert not [p for p in cache.parent.iterdir() if p.suffix == ".tmp"]  # no temporary left behind

    read_cifar10_jpeg(tiny.data_dir, sha256=tiny.sha256)  # same process: the decoded arrays are kept
    _forget_memo(monkeypatch)
    second = read_cifar10_jpeg(tiny.data_dir, sha256=tiny.sha256)  # a new process: from the cache file
    assert decode_calls == [tiny.path]
    assert torch.equal(second.train_images, first.train_images)
    assert torch.equal(second.test_labels, first.test_labels)
    assert second.mean == first.mean and second.std == first.std


def test_cache_directory_argument_and_env(tiny: TinyArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read_cifar10_jpeg(tiny.data_dir, sha256=tiny.sha256, cache_dir=tmp_path / "elsewhere")
    assert len(list((tmp_path / "elsewhere").glob("*.safetensors"))) == 1
    assert _cache_files(tmp_path) == []  # the argument wins over $SHRINKAGE_CACHE
    assert default_cache_dir() == tmp_path / "cache"
    assert default_cache_dir(tmp_path / "x") == tmp_path / "x"


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG layout")
def test_default_cache_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHRINKAGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "shrinkage"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "shrinkage"


def test_cache_is_keyed_by_archive_checksum(
    tmp_path: Path, decode_calls: list[Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    one = make_archive(tmp_path / "one", seed=1)
    two = make_archive(tmp_path / "two", seed=2)
    assert one.sha256 != two.sha256
    read_cifar10_jpeg(one.data_dir, sha256=one.sha256)
    loaded = read_cifar10_jpeg(two.data_dir, sha256=two.sha256)
    assert decode_calls == [one.path, two.path]  # the other archive's cache is not reused
    assert torch.equal(loaded.train_images, two.images["train"])
    assert len(_cache_files(tmp_path)) == 2

    # a cache file under the right name but made from another archive is not trusted either
    first, second = (tmp_path / "cache" / f"cifar10-jpeg-{x.sha256[:16]}.safetensors" for x in (one, two))
    second.write_bytes(first.read_bytes())
    _forget_memo(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        loaded = read_cifar10_jpeg(two.data_dir, sha256=two.sha256)
    assert f"corrupt cache {second}" in caplog.text and f"made from archive {one.sha256}" in caplog.text
    assert torch.equal(loaded.train_images, two.images["train"])
    assert decode_calls[-1] == two.path and len(decode_calls) == 3


def _flip_byte_near_end(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the last tensor (the test images), past the header
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: path.write_bytes(b"not a safetensors file"), ""),
        (lambda path: path.write_bytes(path.read_bytes()[:1000]), ""),
        (_flip_byte_near_end, "contents do not match their recorded digest"),
    ],
    ids=["garbage", "truncated", "flipped-byte"],
)
def test_corrupt_cache_is_rebuilt(
    damage: Callable[[Path], None],
    reason: str,
    tiny: TinyArchive,
    tmp_path: Path,
    decode_calls: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    read_cifar10_jpeg(tiny.data_dir, sha256=tiny.sha256)
    (cache,) = _cache_files(tmp_path)
    damage(cache)
    _forget_memo(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        data = read_cifar10_jpeg(tiny.data_dir, sha256=tiny.sha256)
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    message = record.getMessage()
    assert message.startswith(f"corrupt cache {cache} (") and "rebuilding it from the archive" in message
    assert reason in message and "\n" not in message
    assert len(decode_calls) == 2
    assert torch.equal(data.test_images, tiny.images["test"])
    _forget_memo(monkeypatch)
    read_cifar10_jpeg(tiny.data_dir, sha256=tiny.sha256)
    assert len(decode_calls) == 2  # the rebuilt cache is valid


def test_unwritable_cache_only_warns(tiny: TinyArchive, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        data = read_cifar10_jpeg(tiny.data_dir, sha256=tiny.sha256, cache_dir=blocker / "cache")
    assert torch.equal(data.train_images, tiny.images["train"])
    assert f"cannot write cache {blocker / 'cache'}" in caplog.text


def _one_line(info: pytest.ExceptionInfo[DataError]) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_no_data_directory_names_the_variable() -> None:
    with pytest.raises(DataError) as info:
        load_cifar10_jpeg("train")
    message = _one_line(info)
    assert "SHRINKAGE_DATA_DIR" in message and CIFAR10_JPEG_ARCHIVE in message


def test_missing_archive_names_file_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHRINKAGE_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as info:
        load_cifar10_jpeg("test")
    message = _one_line(info)
    assert str(tmp_path / CIFAR10_JPEG_ARCHIVE) in message and "SHRINKAGE_DATA_DIR" in message


def test_wrong_checksum_names_file(tiny: TinyArchive, tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_cifar10_jpeg(tiny.data_dir, sha256="0" * 64)
    message = _one_line(info)
    assert message.startswith(f"corrupt data file {tiny.path}: sha256 {tiny.sha256}, expected {'0' * 64}")
    # without an injected checksum the known one applies: the tiny archive has the wrong size
    with pytest.raises(DataError, match=f"corrupt data file {tiny.path}: .* bytes, expected 19433539"):
        read_cifar10_jpeg(tiny.data_dir)
    assert _cache_files(tmp_path) == []  # nothing decoded nor cached


def _archive_with(tmp_path: Path, name: str, data: bytes) -> TinyArchive:
    return make_archive(tmp_path / "data", extra=[(name, data)])


def test_unreadable_image_names_member(tmp_path: Path) -> None:
    bad = _archive_with(tmp_path, "train/cat/0007.jpg", b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError) as info:
        read_cifar10_jpeg(bad.data_dir, sha256=bad.sha256)
    message = _one_line(info)
    assert message.startswith(f"cannot decode image train/cat/0007.jpg in {bad.path}: ")


def test_wrong_image_size_names_member(tmp_path: Path) -> None:
    small = _encode(_smooth_images(1, torch.Generator().manual_seed(0), size=16)[0])
    bad = _archive_with(tmp_path, "test/dog/0099.jpg", small)
    with pytest.raises(
        DataError, match=r"image test/dog/0099.jpg in .* has shape \(3, 16, 16\), expected \(3, 32, 32\)"
    ):
        read_cifar10_jpeg(bad.data_dir, sha256=bad.sha256)


@pytest.mark.parametrize("name", ["train/unicorn/0000.jpg", "valid/cat/0000.jpg", "train/cat/notes.txt"])
def test_unexpected_member_is_named(tmp_path: Path, name: str) -> None:
    bad = _archive_with(tmp_path, name, b"x")
    with pytest.raises(DataError, match=f"unexpected member {name} in {bad.path}"):
        read_cifar10_jpeg(bad.data_dir, sha256=bad.sha256)


def test_not_a_tar_gz(tmp_path: Path) -> None:
    path = tmp_path / CIFAR10_JPEG_ARCHIVE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"plain bytes, not gzip")
    with pytest.raises(DataError) as info:
        read_cifar10_jpeg(tmp_path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    assert _one_line(info).startswith(f"corrupt archive {path}: ")


def test_pillow_decodes_when_torchvision_is_missing(tiny: TinyArchive, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("PIL")
    monkeypatch.setitem(sys.modules, "torchvision.io", None)  # makes the import fail
    data = read_cifar10_jpeg(tiny.data_dir, sha256=tiny.sha256)
    # both are libjpeg decoders; allow for a different IDCT rounding
    difference = (data.train_images.int() - tiny.images["train"].int()).abs().max()
    assert difference <= 2
    assert torch.equal(data.train_labels, tiny.labels["train"])


def test_no_decoder_is_one_line(tiny: TinyArchive, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError) as info:
        read_cifar10_jpeg(tiny.data_dir, sha256=tiny.sha256)
    assert _one_line(info) == f"cannot decode the JPEGs in {tiny.path}: install torchvision or Pillow"


def test_cache_needs_no_decoder(tiny: TinyArchive, monkeypatch: pytest.MonkeyPatch) -> None:
    read_cifar10_jpeg(tiny.data_dir, sha256=tiny.sha256)
    _forget_memo(monkeypatch)
    monkeypatch.setitem(sys.modules, "torchvision.io", None)
    monkeypatch.setitem(sys.modules, "PIL", None)
    assert torch.equal(read_cifar10_jpeg(tiny.data_dir, sha256=tiny.sha256).test_images, tiny.images["test"])


def test_unknown_split() -> None:
    with pytest.raises(ConfigError, match="unknown split 'val'"):
        load_cifar10_jpeg("val")  # type: ignore[arg-type]


def test_registered_and_configurable(tiny: TinyArchive, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_dataset_spec("cifar10-jpeg")
    assert (spec.in_channels, spec.image_size, spec.num_classes) == (3, 32, 10)
    assert spec.title == "CIFAR-10 (JPEG copy)" and spec.train_augment is random_crop_flip
    assert get_dataset_spec("mnist").title == "MNIST" and get_dataset_spec("mnist").train_augment is None

    # the registry loads with the known checksum: point it at the tiny archive's
    monkeypatch.setitem(KNOWN_SHA256, CIFAR10_JPEG_ARCHIVE, Sha256(None, tiny.sha256))
    monkeypatch.setenv("SHRINKAGE_DATA_DIR", str(tiny.data_dir))
    test = spec.load("test", None)
    assert len(test) == 10 * TEST_PER_CLASS and test.image_shape == (3, 32, 32)

    text = "name: t\nmodel: {name: resnet20}\ndata: {name: cifar10-jpeg}\ntrain: {lr: 0.1, epochs: 1}\n"
    config = parse_config(text, "t.yaml")
    assert (config.model.in_channels, config.model.image_size, config.model.num_classes) == (3, 32, 10)


# --- augmentation ---------------------------------------------------------------------------


def _labelled_pixels(count: int, channels: int = 3, size: int = 32) -> torch.Tensor:
    """Images whose every pixel value is unique and non-zero (zero is the padding)."""
    values = torch.arange(1, count * channels * size * size + 1, dtype=torch.float32)
    return values.view(count, channels, size, size)


def _locate(original: torch.Tensor, out: torch.Tensor, padding: int) -> tuple[int, int, bool]:
    """(row shift, column shift, flipped) of a crop, read off its centre pixels."""
    size = original.shape[-1]
    centre = size // 2
    position = (original[0] == out[0, centre, centre]).nonzero()
    assert position.shape[0] == 1, "the centre pixel is always inside the image"
    row, column = position[0].tolist()
    flipped = bool(out[0, centre, centre + 1] == original[0, row, column - 1])
    column_shift = column - (size - 1 - centre if flipped else centre) + padding
    return row - centre + padding, column_shift, flipped


def _reference_crop(image: torch.Tensor, padding: int, rows: int, columns: int, flipped: bool) -> torch.Tensor:
    size = image.shape[-1]
    window = F.pad(image, (padding,) * 4)[:, rows : rows + size, columns : columns + size]
    return window.flip(-1) if flipped else window


def test_crop_and_flip_match_a_per_image_reference() -> None:
    images = _labelled_pixels(200)
    out = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    seen_shifts: set[int] = set()
    flips = 0
    for image, crop in zip(images, out, strict=True):
        rows, columns, flipped = _locate(image, crop, padding=4)
        torch.testing.assert_close(crop, _reference_crop(image, 4, rows, columns, flipped), rtol=0, atol=0)
        seen_shifts.update((rows, columns))
        flips += flipped
    assert seen_shifts == set(range(9))  # every offset of the 40x40 padded image occurs
    assert 60 < flips < 140  # a fair coin over 200 images


def test_flip_only_without_padding() -> None:
    images = _labelled_pixels(64, channels=2, size=6)
    out = random_crop_flip(images, torch.Generator().manual_seed(3), padding=0)
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 64


def test_augmentation_is_deterministic_under_a_seeded_generator() -> None:
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    first = random_crop_flip(images, torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global RNG plays no part
    again = random_crop_flip(images, torch.Generator().manual_seed(7))
    other = random_crop_flip(images, torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.dtype == torch.uint8  # works before normalization too
    with pytest.raises(ConfigError, match="padding"):
        random_crop_flip(images, padding=-1)


# --- the real archive -----------------------------------------------------------------------


REAL_DATA_DIR = data_dir_holding(CIFAR10_JPEG_ARCHIVE)  # read before the autouse fixture clears the variable


@pytest.mark.slow
@pytest.mark.skipif(REAL_DATA_DIR is None, reason="neither SHRINKAGE_DATA_DIR nor ../shared/datasets holds "
                    "cifar10-jpeg/cifar10-jpeg.tar.gz")
def test_real_archive(decode_calls: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHRINKAGE_DATA_DIR", str(REAL_DATA_DIR))  # the cache goes to the test's directory
    spec = get_dataset_spec("cifar10-jpeg")
    train, test = spec.load("train", None), spec.load("test", None)
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    raw = read_cifar10_jpeg()
    # the published per-channel pixel means of this copy (0-255 scale)
    for images, means in ((raw.train_images, (125.27, 122.93, 113.86)), (raw.test_images, (125.99, 123.69, 114.85))):
        measured = [255 * value for value in channel_stats(images)[0]]
        np.testing.assert_allclose(measured, means, atol=0.01)
    _forget_memo(monkeypatch)
    assert torch.equal(read_cifar10_jpeg().test_images, raw.test_images)
    assert len(decode_calls) == 1  # decoded once, then read from the cache
