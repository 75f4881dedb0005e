"""``prune()`` with one capture reused by every compaction it measures, against capturing anew.

    python benchmarks/prune_reuse.py

For each model, the same budgeted ``prune`` runs alternately with the capture reused (the
default) and with every measured compaction capturing the model again; both must pick
the same selection. Medians and ranges of the interleaved repeats, one process.

Results: results/graph/prune_reuse.json (seconds, threads and the load average at the start).
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import nn

import shrinkage

# the module, not the function ``shrinkage.budget.prune`` that shadows it in the package
prune_module = importlib.import_module("shrinkage.budget.prune")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "graph" / "prune_reuse.json"
REPEATS = 3


def models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8,
                            depth=2).eval()  # fmt: skip
    return {
        "vit_tiny (2 blocks, 32x32)": (vit, torch.randn(2, 3, 32, 32)),
        "resnet18 (64x64)": (torchvision.models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 64, 64)),
    }


def run_once(model: nn.Module, x: torch.Tensor, reuse: bool) -> tuple[float, dict[str, Any]]:
    original = prune_module.compact

    def recapturing(m: nn.Module, example: Any, options: Any, graph: Any = None) -> nn.Module:
        return original(m, example, options)  # the graph is dropped: compact() captures again

    prune_module.compact = original if reuse else recapturing  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        result = shrinkage.prune(model, (x,), shrinkage.Budget(macs=0.6))
        seconds = time.perf_counter() - start
    finally:
        prune_module.compact = original  # type: ignore[assignment]
    return seconds, {"removed": result.removed, "macs": result.achieved.macs, "evaluations": result.evaluations}


def main() -> None:
    load = os.getloadavg()[0]
    rows = []
    for name, (model, x) in models().items():
        times: dict[str, list[float]] = {"reused": [], "recaptured": []}
        picks = []
        for _ in range(REPEATS):
            for label in ("reused", "recaptured"):
                seconds, pick = run_once(model, x, reuse=label == "reused")
                times[label].append(seconds)
                picks.append(pick)
        same = all(p == picks[0] for p in picks)
        medians = {k: statistics.median(v) for k, v in times.items()}
        rows.append({
            "model": name, "budget": {"macs": 0.6}, "evaluations": picks[0]["evaluations"], "same_selection": same,
            "seconds": {k: {"median": medians[k], "min": min(v), "max": max(v)} for k, v in times.items()},
            "speedup": medians["recaptured"] / medians["reused"],
        })  # fmt: skip
        verdict = "same selection" if same else "DIFFERENT selections"
        print(name, {k: round(v, 2) for k, v in medians.items()}, f"x{rows[-1]['speedup']:.2f}", verdict)
    OUT.write_text(json.dumps({
        "benchmark": "prune_reuse", "command": "python benchmarks/prune_reuse.py",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": platform.platform(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "load_average_at_start": load,
        "repeats": REPEATS, "rows": rows,
    }, indent=1) + "\n", encoding="utf-8")  # fmt: skip


if __name__ == "__main__":
    main()
