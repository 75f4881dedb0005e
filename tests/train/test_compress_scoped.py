"""``compress`` to a budget of the conv layers' MACs: selection, measurement and report agree."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import shrinkage
from shrinkage.config import RegularizationConfig, TargetConfig
from shrinkage.metrics import count_macs
from shrinkage.train.compress import compress

from .helpers import tiny_config, tiny_model

Datasets = tuple[shrinkage.data.ImageDataset, shrinkage.data.ImageDataset]


def test_compress_measures_and_reports_the_conv_layers_macs(tmp_path: Path, datasets: Datasets) -> None:
    plain = dataclasses.replace(tiny_config(epochs=1, finetune=0), regularization=RegularizationConfig())
    config = dataclasses.replace(plain, target=TargetConfig(macs=0.5, macs_of=("Conv2d",), recalibrate_batches=0))
    model = tiny_model().eval()
    result = compress(config, model, datasets[0], datasets[1], tmp_path)
    assert result["met"] and result["budget"]["macs_of"] == "Conv2d"
    final = shrinkage.load(tmp_path / "target.safetensors", tiny_model())
    x = datasets[1].images[:1]
    conv = count_macs(final, x, ["conv1"]).total / count_macs(model, x, ["conv1"]).total
    assert result["achieved"]["macs"] == conv <= 0.5
    sizes = result["size"]
    assert sizes["dense"]["scoped_macs_per_image"] == count_macs(model, x, ["conv1"]).total
    assert sizes["final"]["macs_per_image"] == count_macs(final, x).total  # every MAC, beside the scoped ones
    assert "| MACs of the Conv2d layers (fraction of dense) | 0.5 |" in (tmp_path / "target.md").read_text()
    assert json.loads((tmp_path / "target.json").read_text())["achieved"]["macs"] == conv
