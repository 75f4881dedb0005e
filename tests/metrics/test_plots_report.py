"""Plots (PNG files) and the JSON/markdown run report."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from shrinkage.metrics import (
    layer_table,
    plot_layer_sparsity,
    plot_singular_values,
    plot_weight_pattern,
    render_markdown,
    size_section,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _models() -> tuple[nn.Module, nn.Module]:
    dense = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    with torch.no_grad():
        dense[0].weight[1] = 0
        dense[0].weight[:, 2] = 0  # a zero input channel, kept by the compact model
    compact = nn.Sequential(nn.Conv2d(3, 7, 3), nn.ReLU(), nn.Flatten(), nn.Linear(7 * 8 * 8, 10))
    return dense, compact


def _is_png(path: Path) -> bool:
    return path.stat().st_size > len(PNG_MAGIC) and path.read_bytes().startswith(PNG_MAGIC)


def test_plots_write_png_files(tmp_path: Path) -> None:
    import matplotlib
    import matplotlib.pyplot as plt

    backend, open_figures = matplotlib.get_backend(), plt.get_fignums()
    dense, compact = _models()
    rows = layer_table(dense, compact)
    outputs = [
        plot_layer_sparsity(rows, tmp_path / "sparsity.png"),
        plot_weight_pattern("0", dense[0].weight, tmp_path / "conv.png"),
        plot_weight_pattern("3", dense[3].weight, tmp_path / "linear.png"),
        plot_singular_values(
            {"0": dense[0].weight, "3": dense[3].weight, "zero": torch.zeros(3, 3)},
            tmp_path / "spectra.png",
            energy=0.9,
        ),
    ]
    for path in outputs:
        assert _is_png(path), path
    # Nothing global touched: no pyplot figures left open, backend unchanged.
    assert plt.get_fignums() == open_figures and matplotlib.get_backend() == backend
    # Atomic writes leave no temp files behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.png", "linear.png", "sparsity.png", "spectra.png"]


def _report() -> dict:
    dense, compact = _models()
    return {
        "run": {"name": "demo", "model": "tiny", "dataset": "random", "seed": 0, "command": "shrinkage run x"},
        "accuracy": {
            "dense": {"accuracy": 0.99, "error": 0.01, "loss": 0.03, "n": 100},
            "compact": {"accuracy": 0.985, "error": 0.015, "loss": 0.04, "n": 100},
        },
        "size": size_section(dense, compact, (torch.randn(1, 3, 10, 10),)),
        "latency": [{"batch_size": 1, "dense_ms": 0.2, "compact_ms": 0.1, "speedup": 2.0}],
        "layers": [row.as_dict() for row in layer_table(dense, compact)],
        "equivalence": {"max_abs_diff": 1.5e-6, "checked_on": "64 random inputs"},
    }


def test_size_section_ratios_are_dense_over_compact() -> None:
    size = _report()["size"]
    assert size["dense"]["macs"] == 8 * 27 * 64 + 512 * 10
    assert size["compact"]["macs"] == 7 * 27 * 64 + 448 * 10
    assert size["mac_ratio"] == size["dense"]["macs"] / size["compact"]["macs"]
    assert size["conv_macs"] == {"dense": 8 * 27 * 64, "compact": 7 * 27 * 64, "ratio": pytest.approx(8 / 7)}


def test_render_markdown_has_separate_mac_ratio_and_speedup_columns() -> None:
    text = render_markdown(_report())
    latency_header = next(line for line in text.splitlines() if line.startswith("| batch size"))
    cells = [cell.strip() for cell in latency_header.strip("|").split("|")]
    assert "MAC ratio" in cells and "speedup" in cells
    assert "99.00%" in text and "98.50%" in text
    assert "## Layers" in text and "Conv2d 7x3x3x3" in text


def test_render_markdown_tolerates_missing_sections() -> None:
    assert render_markdown({}).startswith("# Report: unnamed run")
    text = render_markdown({"accuracy": {"dense": {"accuracy": 0.5}}, "latency": [{"batch_size": 4}]})
    assert "50.00%" in text and "–" in text


def test_write_report(tmp_path: Path) -> None:
    report = _report()
    run_dir = tmp_path / "run"
    write_report(run_dir, report)
    loaded = json.loads((run_dir / "report.json").read_text())
    assert loaded["size"] == report["size"]
    assert (run_dir / "report.json").read_text().startswith('{\n  "run"')
    assert (run_dir / "report.md").read_text() == render_markdown(report)
    assert sorted(p.name for p in run_dir.iterdir()) == ["report.json", "report.md"]
