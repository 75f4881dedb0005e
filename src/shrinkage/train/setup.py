"""Build what a run needs from its config: seeded RNGs, model, data, optimizers."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shrinkage.config import ModelConfig, RunConfig
from shrinkage.data import ImageDataset, get_dataset_spec
from shrinkage.errors import ConfigError
from shrinkage.zoo import ModelSpec
from shrinkage.zoo import build_model as zoo_build

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialized zoo model (uses the global torch RNG: seed first)."""
    missing = [f.name for f in dataclasses.fields(config) if getattr(config, f.name) is None]
    if missing:
        # with_dataset_defaults fills these when a config is loaded; a hand-built config may not
        raise ConfigError(f"model.{missing[0]}: not set (load the config with load_config or set it)")
    spec = ModelSpec(config.name, config.in_channels, config.num_classes, config.image_size)  # type: ignore[arg-type]
    try:
        return zoo_build(spec)
    except ConfigError as error:
        raise ConfigError(f"model.name: {error}") from None


def load_datasets(config: RunConfig, device: torch.device) -> tuple[ImageDataset, ImageDataset]:
    """``(train, test)`` splits on ``device``; the train split cut to ``data.limit_train``.

    The test split is never cut: accuracy is always reported on the full test set.
    """
    spec = get_dataset_spec(config.data.name)
    data_dir = Path(config.data.dir) if config.data.dir else None
    train, test = spec.load("train", data_dir), spec.load("test", data_dir)
    if config.data.limit_train is not None and config.data.limit_train < len(train):
        n = config.data.limit_train
        log.warning("data.limit_train=%d: training on %d of %d samples (smoke tests only)", n, n, len(train))
        # evenly spaced samples, not the first n: a split stored class by class (the CIFAR-10
        # JPEG copy) would otherwise give a subset of one class
        keep = torch.linspace(0, len(train) - 1, n).round().long()
        name = f"{train.name}[{n} of {len(train)}]"
        train = ImageDataset(train.images[keep], train.labels[keep], train.num_classes, name)
    return _to(train, device), _to(test, device)


def _to(dataset: ImageDataset, device: torch.device) -> ImageDataset:
    if device.type == "cpu":
        return dataset
    return dataclasses.replace(dataset, images=dataset.images.to(device), labels=dataset.labels.to(device))


def sgd(params: Iterable[nn.Parameter], lr: float, config: RunConfig) -> torch.optim.SGD:
    """SGD with the run's momentum, weight decay and Nesterov flag (one parameter group:
    the proximal maps need one learning rate per regularized parameter)."""
    train = config.train
    return torch.optim.SGD(
        list(params), lr=lr, momentum=train.momentum, weight_decay=train.weight_decay, nesterov=train.nesterov
    )


def resolve_device(name: str) -> torch.device:
    """``torch.device`` for a config's device, failing early if it is not available."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: '{name}' requested but MPS is not available")
    return device
