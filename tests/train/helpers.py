"""A tiny model, synthetic data and configs so that training tests take seconds."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from shrinkage.config import (
    DataConfig,
    FinetuneConfig,
    GroupLassoConfig,
    GroupName,
    Mode,
    ModelConfig,
    OptimConfig,
    RegularizationConfig,
    RuleConfig,
    RunConfig,
    SelectConfig,
    StepSchedule,
)
from shrinkage.data import ImageDataset


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 4, 3), relu1=nn.ReLU(), flatten=nn.Flatten(),
        fc1=nn.Linear(4 * 6 * 6, 8), relu2=nn.ReLU(), fc2=nn.Linear(8, 3),
    ))


def tiny_data(n: int, seed: int) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    images = torch.randn(n, 1, 8, 8, generator=g) + labels.view(-1, 1, 1, 1).float()
    return ImageDataset(images, labels, 3, f"tiny{seed}")


def tiny_config(mode: Mode = Mode.PROXIMAL, epochs: int = 2, finetune: int = 1) -> RunConfig:
    rules = (
        RuleConfig(SelectConfig(types=("Conv2d",)), (GroupName.FILTERS,), GroupLassoConfig(0.05)),
        RuleConfig(SelectConfig(names=("fc1",)), (GroupName.FILTERS, GroupName.CHANNELS), GroupLassoConfig(0.05)),
    )
    return RunConfig(
        name="tiny",
        model=ModelConfig("tiny", 1, 3, 8),
        data=DataConfig(batch_size=16, test_batch_size=50),
        train=OptimConfig(lr=0.05, epochs=epochs, weight_decay=1e-4,
                          lr_schedule=StepSchedule(step_size=1, gamma=0.5), seed=3),
        regularization=RegularizationConfig(mode=mode, rules=rules, zero_threshold=0.05),
        finetune=FinetuneConfig(epochs=finetune, lr=0.01),
    )


class Stop(Exception):
    """Simulates a crash (or Ctrl-C) right after an epoch's checkpoint is written."""


def stop_after(n: int) -> Callable[[dict[str, Any]], None]:
    """An ``on_epoch_end`` hook that raises :class:`Stop` after global epoch ``n``."""

    def hook(row: dict[str, Any]) -> None:
        if row["global_epoch"] == n:
            raise Stop

    return hook


def without_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metric rows without their wall-clock column, for comparing two runs."""
    return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]
