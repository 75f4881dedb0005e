"""Every shipped config binds its rules to its model, and one proximal step stays finite."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shrinkage.config import load_config, resolve_rules
from shrinkage.optim import Regularizer
from shrinkage.train import build_model

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_rules_bind_and_prox_is_finite(path: Path) -> None:
    config = load_config(path)
    model = build_model(config.model)
    shape = (1, config.model.in_channels, config.model.image_size, config.model.image_size)
    rules = resolve_rules(config.regularization, shape)  # coupled groups trace the model on this input
    if not rules:
        return
    regularizer = Regularizer(model, rules)
    assert regularizer.terms
    regularizer.prox_({id(p): config.train.lr for p in model.parameters()})
    assert all(torch.isfinite(p).all() for p in model.parameters())
