"""CIFAR-10 (JPEG copy): CIFAR-10 re-encoded as quality-75 JPEGs, decoded once and cached.

The images are CIFAR-10's, but JPEG is lossy (about 6 of 255 mean absolute pixel
difference), so accuracies on this copy are not comparable to published CIFAR-10
numbers: it is called "CIFAR-10 (JPEG copy)" wherever results are reported.

Archive: ``<data_dir>/cifar10-jpeg/cifar10-jpeg.tar.gz`` (``data_dir`` is the argument
or ``$SHRINKAGE_DATA_DIR``) holding ``train/<class>/<name>.jpg`` (50,000) and
``test/<class>/<name>.jpg`` (10,000), 32x32 RGB; class folders are CIFAR-10's class
names, labelled in CIFAR-10's order. Its SHA-256 is checked before anything is read.

Cache: all 60,000 images are decoded once into ``<cache>/cifar10-jpeg-<sha256 prefix>.safetensors``
(``<cache>`` is the argument, else ``$SHRINKAGE_CACHE``, else the user's cache directory),
written atomically and keyed by the archive's checksum; it also records a digest of its
own contents, so a damaged cache is noticed, logged and rebuilt from the archive.

Normalization uses the per-channel mean and std of this copy's training split, computed
from the decoded pixels (not the published CIFAR-10 constants, which they only approximate).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import re
import sys
import tarfile
import threading
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from shrinkage.data.checksums import KNOWN_SHA256, verify_file_sha256
from shrinkage.data.dataset import ImageDataset
from shrinkage.data.mnist import DATA_DIR_ENV, Split, resolve_data_dir
from shrinkage.errors import ConfigError, DataError
from shrinkage.io.atomic import atomic_path, remove_stale_temp_files

__all__ = [
    "CACHE_ENV",
    "CIFAR10_CLASSES",
    "CIFAR10_JPEG_ARCHIVE",
    "CIFAR10_JPEG_TITLE",
    "CifarJpegData",
    "channel_stats",
    "default_cache_dir",
    "load_cifar10_jpeg",
    "normalize",
    "random_crop_flip",
    "read_cifar10_jpeg",
]

logger = logging.getLogger(__name__)

CIFAR10_JPEG_TITLE = "CIFAR-10 (JPEG copy)"
CIFAR10_JPEG_ARCHIVE = "cifar10-jpeg/cifar10-jpeg.tar.gz"  # relative to the data directory
CACHE_ENV = "SHRINKAGE_CACHE"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS: tuple[Split, ...] = ("train", "test")

_CLASS_INDEX = {name: index for index, name in enumerate(CIFAR10_CLASSES)}
_MEMBER = re.compile(r"^(?:\./)?(train|test)/([^/]+)/([^/]+\.jpe?g)$", re.IGNORECASE)
_CACHE_FORMAT = "1"  # bump when the cache layout changes: older caches are then rebuilt
_IMAGE_SHAPE = (3, 32, 32)

Decoder = Callable[[bytes], torch.Tensor]


@dataclass(frozen=True)
class CifarJpegData:
    """Both splits as decoded pixels, plus the training split's channel statistics.

    ``<split>_images`` are uint8 (N, 3, 32, 32), RGB; ``<split>_labels`` int64 (N,).
    ``mean`` / ``std`` are per channel, on the [0, 1] pixel scale.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def split(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` of ``split``."""
        if split == "train":
            return self.train_images, self.train_labels
        return self.test_images, self.test_labels


# Decoded archives keyed by (archive identity, expected sha256, cache file), so the train
# and test loads of one run read the cache file once.
_memo: dict[tuple[object, ...], CifarJpegData] = {}
_memo_lock = threading.Lock()


def default_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$SHRINKAGE_CACHE``, else the platform's per-user cache directory."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return base / "shrinkage" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "shrinkage"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    # the XDG spec says to ignore a relative XDG_CACHE_HOME
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".cache"
    return base / "shrinkage"


def read_cifar10_jpeg(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> CifarJpegData:
    """Verify the archive, then return both splits as uint8 pixels (from the cache when valid).

    Args:
        data_dir: directory holding ``cifar10-jpeg/cifar10-jpeg.tar.gz``; defaults to
            ``$SHRINKAGE_DATA_DIR``.
        sha256: expected SHA-256 of the archive, replacing the known one (for tests with a
            small archive of the same layout); the size is then not checked.
        cache_dir: where the decoded cache lives; see :func:`default_cache_dir`.

    Raises:
        DataError: no directory set, archive missing or not matching its checksum, a member
            that is not an image of the expected layout or cannot be decoded, or no decoder.
    """
    archive = _archive_path(data_dir)
    known = KNOWN_SHA256[CIFAR10_JPEG_ARCHIVE]
    expected = (sha256 or known.sha256).lower()
    verify_file_sha256(archive, known.size if sha256 is None else None, expected)
    cache = default_cache_dir(cache_dir) / f"cifar10-jpeg-{expected[:16]}.safetensors"

    stat = archive.stat()
    key = (str(archive.resolve()), stat.st_mtime_ns, stat.st_size, expected, str(cache.resolve()))
    with _memo_lock:
        data = _memo.get(key)
    if data is None:
        tensors = _read_cache(cache, expected)
        if tensors is None:
            tensors = _decode_archive(archive)
            _write_cache(cache, tensors, expected)
        data = _with_stats(tensors)
        with _memo_lock:
            _memo[key] = data
    return data


def load_cifar10_jpeg(
    split: Split,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ImageDataset:
    """A split of the CIFAR-10 (JPEG copy) as float32 images normalized per channel.

    The mean and std are the training split's (see :func:`read_cifar10_jpeg` for the
    arguments). For training, apply :func:`random_crop_flip` to each batch.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    data = read_cifar10_jpeg(data_dir, sha256=sha256, cache_dir=cache_dir)
    images, labels = data.split(split)
    return ImageDataset(
        images=normalize(images, data.mean, data.std), labels=labels, num_classes=10, name=f"cifar10-jpeg/{split}"
    )


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and (population) std of uint8 images (N, 3, H, W), on the [0, 1] scale.

    Exact: computed from a 256-bin histogram per channel, in float64.
    """
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum()
        mean = (counts * levels).sum() / total
        variance = (counts * (levels - mean) ** 2).sum() / total
        means.append(float(mean))
        stds.append(float(variance.sqrt()))
    return (means[0], means[1], means[2]), (stds[0], stds[1], stds[2])


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 images (N, C, H, W) to float32 ``(pixel / 255 - mean) / std`` per channel."""
    shape = (1, len(mean), 1, 1)
    scaled = images.to(torch.float32).div_(255.0)
    return scaled.sub_(torch.tensor(mean).view(shape)).div_(torch.tensor(std).view(shape))


def random_crop_flip(images: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    """Batched training augmentation: pad by ``padding``, crop back at a random offset, flip half.

    Each image of the batch (N, C, H, W) gets its own offset and a fair coin for a
    horizontal flip, all drawn from ``generator`` (the same seed gives the same batch).
    The padding is zeros, which on normalized images is the training mean colour. One
    ``pad`` and one gather for the whole batch, on the batch's device: no per-image Python.
    """
    if padding < 0:
        raise ConfigError(f"padding must be non-negative, got {padding}")
    count, channels, height, width = images.shape
    # drawn where the generator lives (a CPU one for the trainer), then moved to the batch
    where = generator.device if generator is not None else torch.device("cpu")
    shift = torch.randint(0, 2 * padding + 1, (2, count, 1), generator=generator, device=where)
    flip = torch.randint(0, 2, (count, 1), generator=generator, device=where).bool()
    rows = shift[0] + torch.arange(height, device=where)
    columns = torch.arange(width, device=where).expand(count, width)
    columns = torch.where(flip, width - 1 - columns, columns) + shift[1]
    rows, columns = rows.to(images.device), columns.to(images.device)
    padded = F.pad(images, (padding, padding, padding, padding))
    batch = torch.arange(count, device=images.device).view(count, 1, 1, 1)
    channel = torch.arange(channels, device=images.device).view(1, channels, 1, 1)
    return padded[batch, channel, rows.view(count, 1, height, 1), columns.view(count, 1, 1, width)]


def _archive_path(data_dir: str | os.PathLike[str] | None) -> Path:
    root = resolve_data_dir(data_dir)
    if root is None:
        raise DataError(
            f"no data directory for cifar10-jpeg: pass data_dir (data.dir) or set {DATA_DIR_ENV} "
            f"(expects <dir>/{CIFAR10_JPEG_ARCHIVE})"
        )
    archive = root / CIFAR10_JPEG_ARCHIVE
    if not archive.exists():
        raise DataError(
            f"missing {CIFAR10_JPEG_TITLE} archive {archive}: point data.dir or {DATA_DIR_ENV} "
            f"at the directory holding {CIFAR10_JPEG_ARCHIVE}"
        )
    return archive


def _with_stats(tensors: dict[str, torch.Tensor]) -> CifarJpegData:
    mean, std = channel_stats(tensors["train_images"])
    return CifarJpegData(**tensors, mean=mean, std=std)


def _jpeg_decoder(archive: Path) -> Decoder:
    """torchvision's libjpeg decoder if torchvision is installed, else Pillow's."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        pass
    else:

        def decode_with_torchvision(data: bytes) -> torch.Tensor:
            # a bytearray: torch warns about tensors over read-only buffers
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)

        return decode_with_torchvision
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"cannot decode the JPEGs in {archive}: install torchvision or Pillow") from None

    def decode_with_pillow(data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.array(image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    return decode_with_pillow


def _read_members(archive: Path) -> dict[str, list[tuple[int, str, bytes]]]:
    """``(label, member name, JPEG bytes)`` per split, in archive order."""
    found: dict[str, list[tuple[int, str, bytes]]] = {split: [] for split in SPLITS}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isdir():
                    continue
                match = _MEMBER.match(member.name)
                if not member.isfile() or match is None or match[2] not in _CLASS_INDEX:
                    raise DataError(
                        f"unexpected member {member.name} in {archive} (expected train|test/<class>/<name>.jpg)"
                    )
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file always has contents
                found[match[1]].append((_CLASS_INDEX[match[2]], member.name, handle.read()))
    except DataError:
        raise
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"corrupt archive {archive}: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read archive {archive}: {exc.strerror or exc}") from None
    return found


def _decode_archive(archive: Path) -> dict[str, torch.Tensor]:
    """Decode every image of the archive: ``<split>_images`` uint8 and ``<split>_labels`` int64.

    Within a split the order is by class, then member name (archive order is not relied on).
    """
    decode = _jpeg_decoder(archive)
    members = _read_members(archive)
    with warnings.catch_warnings():
        # torchvision >= 0.29 warns on every decode_jpeg call that its image codecs are
        # deprecated; 60,000 identical warnings help no one (Pillow takes over once they go)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.")
        tensors = _decode_members(archive, members, decode)
    logger.info(
        "decoded %s from %s: %d train, %d test images",
        CIFAR10_JPEG_TITLE,
        archive,
        len(tensors["train_labels"]),
        len(tensors["test_labels"]),
    )
    return tensors


def _decode_members(
    archive: Path, members: dict[str, list[tuple[int, str, bytes]]], decode: Decoder
) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for split in SPLITS:
        entries = sorted(members[split], key=lambda entry: (entry[0], entry[1]))
        if not entries:
            raise DataError(f"archive {archive} has no {split}/ images")
        images = torch.empty((len(entries), *_IMAGE_SHAPE), dtype=torch.uint8)
        for index, (_, name, data) in enumerate(entries):
            try:
                pixels = decode(data)
            except Exception as exc:  # each decoder has its own error types for a damaged JPEG
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DataError(f"cannot decode image {name} in {archive}: {reason}") from None
            if tuple(pixels.shape) != _IMAGE_SHAPE:
                raise DataError(f"image {name} in {archive} has shape {tuple(pixels.shape)}, expected {_IMAGE_SHAPE}")
            images[index] = pixels
        tensors[f"{split}_images"] = images
        tensors[f"{split}_labels"] = torch.tensor([label for label, _, _ in entries], dtype=torch.int64)
    return tensors


def _content_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).numpy().view(np.uint8).data)
    return digest.hexdigest()


def _cache_problem(metadata: dict[str, str], tensors: dict[str, torch.Tensor], archive_sha256: str) -> str | None:
    """Why a cache file's contents cannot be used, or ``None``."""
    if metadata.get("format") != _CACHE_FORMAT:
        return f"format {metadata.get('format')!r}, expected {_CACHE_FORMAT!r}"
    if metadata.get("archive_sha256") != archive_sha256:
        return f"made from archive {metadata.get('archive_sha256')}, expected {archive_sha256}"
    expected_names = {f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")}
    if set(tensors) != expected_names:
        return f"tensors {sorted(tensors)}, expected {sorted(expected_names)}"
    for split in SPLITS:
        images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != _IMAGE_SHAPE:
            return f"{split}_images is {images.dtype} {tuple(images.shape)}"
        if labels.dtype != torch.int64 or tuple(labels.shape) != (images.shape[0],):
            return f"{split}_labels is {labels.dtype} {tuple(labels.shape)} for {images.shape[0]} images"
    if metadata.get("content_sha256") != _content_digest(tensors):
        return "contents do not match their recorded digest"
    return None


def _read_cache(path: Path, archive_sha256: str) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or ``None`` (with a log line) when there is no usable cache."""
    if not path.exists():
        logger.info("no cache %s yet: decoding the %s archive once", path, CIFAR10_JPEG_TITLE)
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, SafetensorError, ValueError) as exc:
        logger.warning("corrupt cache %s (%s): rebuilding it from the archive", path, exc)
        return None
    problem = _cache_problem(metadata, tensors, archive_sha256)
    if problem is not None:
        logger.warning("corrupt cache %s (%s): rebuilding it from the archive", path, problem)
        return None
    logger.debug("read %s from cache %s", CIFAR10_JPEG_TITLE, path)
    return tensors


def _write_cache(path: Path, tensors: dict[str, torch.Tensor], archive_sha256: str) -> None:
    """Write the cache atomically; failing to write it only costs a decode next time."""
    metadata = {"format": _CACHE_FORMAT, "archive_sha256": archive_sha256, "content_sha256": _content_digest(tensors)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(path.parent)
        with atomic_path(path) as temporary:
            save_file(tensors, temporary, metadata=metadata)
    except (OSError, SafetensorError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        logger.warning("cannot write cache %s (%s): the archive will be decoded again next time", path, reason)
        return
    logger.info("cached the decoded %s in %s", CIFAR10_JPEG_TITLE, path)
