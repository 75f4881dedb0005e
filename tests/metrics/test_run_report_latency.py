"""The run report times dense vs compact with a control and, when report.layer_latency is
on, every layer alone; report.json and report.md both carry it."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from train.helpers import tiny_config, tiny_data, tiny_model

import shrinkage
from shrinkage.config import ReportConfig
from shrinkage.train.compaction import Compacted
from shrinkage.train.report import build_report


def _report(tmp_path: Path, layer_latency: bool) -> dict:
    dense = tiny_model()
    with torch.no_grad():
        dense.conv1.weight[:2] = 0
        dense.conv1.bias[:2] = 0
    compact = shrinkage.compact(dense, (torch.randn(1, 1, 8, 8),))
    config = dataclasses.replace(
        tiny_config(), report=ReportConfig(latency_batch_sizes=(2,), repeats=1, plots=False, layer_latency=layer_latency)
    )
    compacted = Compacted(model=compact, max_abs_diff=0.0, checked_on="1 random input", factorized=False)
    return build_report(config, tmp_path, dense, compacted, tiny_data(20, seed=1), rows=[])


def test_report_has_control_and_time_per_layer(tmp_path: Path) -> None:
    report = _report(tmp_path, layer_latency=True)
    (latency,) = report["latency"]
    assert isinstance(latency["reliable"], bool) and latency["reason"]
    assert latency["threads"] == torch.get_num_threads()
    rows = {row["name"]: row for row in report["layer_latency"]["rows"]}
    assert list(rows) == ["conv1", "fc1", "fc2"]
    assert rows["conv1"]["compact_form"].startswith("Conv2d(1, 2, kernel_size=(3, 3)")
    assert rows["conv1"]["mac_ratio"] == pytest.approx(2.0)
    assert report["layer_latency"]["batch_size"] == 2
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["layer_latency"]["rows"][0]["name"] == "conv1" and "reliable" in saved["latency"][0]
    markdown = (tmp_path / "report.md").read_text()
    assert "## Time per layer" in markdown and "| `conv1` | Conv2d |" in markdown
    assert "| control | reliable |" in markdown


def test_layer_latency_switch_off(tmp_path: Path) -> None:
    report = _report(tmp_path, layer_latency=False)
    assert "layer_latency" not in report and report["latency"]
    assert "## Time per layer" not in (tmp_path / "report.md").read_text()
