"""Capture + plan time: torch.export vs torch.fx capture, against Torch-Pruning, one run.

    pip install -c constraints.txt -e ".[bench]"
    python benchmarks/capture_time.py

The same zeroed torchvision models as ``graph_vs_torch_pruning.py`` (a quarter of every
coupled group zeroed), plus vit_b_16. For each model, medians of interleaved repeats of:

* ``plan``: capture the graph, find the channel spaces and decide what goes
  (``plan_compaction`` with forms chosen by MACs, so no layer is timed);
* ``plan + build + check``: ``compact()`` itself with the same options: the above, then
  building the compacted model and comparing its outputs on the example with the
  original's (which the fx capture computed while checking its trace);
* Torch-Pruning: ``DependencyGraph().build_dependency`` and pruning the zeroed output
  channels of every layer, without and with the same output comparison.

Results: results/graph/capture_time.json (seconds, threads and the load average at the start).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from graph_vs_torch_pruning import MODELS, SIZE, torch_pruning_compact, zeroed_model  # noqa: E402

from shrinkage.compact import CompactOptions, max_output_difference  # noqa: E402
from shrinkage.compact.api import compact, plan_compaction  # noqa: E402
from shrinkage.compact.choice import ByMacs  # noqa: E402
from shrinkage.graph.capture import Capture  # noqa: E402
from shrinkage.io import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 5


def _ours(model: torch.nn.Module, x: torch.Tensor, capture: Capture, check: bool) -> Callable[[], object]:
    options = CompactOptions(capture=capture, choose_by=ByMacs())

    def run() -> object:
        if not check:
            return plan_compaction(model, (x,), options)
        return compact(model, (x,), options)  # raises if its outputs differ from the model's

    return run


def _theirs(model: torch.nn.Module, x: torch.Tensor, check: bool) -> Callable[[], object]:
    def run() -> object:
        small = torch_pruning_compact(model, x)
        if check:
            assert max_output_difference(model, small, (x,)) < 1e-3
        return small

    return run


def main() -> None:
    x = torch.randn(2, 3, SIZE, SIZE)
    load = os.getloadavg()[0]
    rows = []
    for name in (*MODELS, "vit_b_16"):
        model = zeroed_model(name) if name != "vit_b_16" else torchvision.models.vit_b_16().eval()
        inputs = x if name != "vit_b_16" else torch.randn(2, 3, 224, 224)
        cases = {
            f"{cap.name.lower()}_{'check' if check else 'plan'}": _ours(model, inputs, cap, check)
            for cap in (Capture.EXPORT, Capture.FX) for check in (False, True)
        }  # fmt: skip
        cases |= {f"torch_pruning_{'check' if c else 'plan'}": _theirs(model, inputs, c) for c in (False, True)}
        times: dict[str, list[float]] = {k: [] for k in cases}
        errors: dict[str, str] = {}
        for _ in range(REPEATS):  # interleaved: every case once per round
            for key, fn in cases.items():
                if key in errors:
                    continue
                start = time.perf_counter()
                try:
                    fn()
                except Exception as exc:  # report a capture's or a peer's failure, do not hide it
                    errors[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    continue
                times[key].append(time.perf_counter() - start)
        row = {"model": name, "seconds": {k: statistics.median(v) for k, v in times.items() if v}, "errors": errors}
        rows.append(row)
        print(name, {k: round(v, 3) for k, v in row["seconds"].items()}, errors or "", flush=True)
    write_json(ROOT / "results" / "graph" / "capture_time.json", {
        "benchmark": "capture_time", "command": "python benchmarks/capture_time.py",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
        "torch": torch.__version__, "torchvision": torchvision.__version__, "torch_pruning": tp.__version__,
        "threads": torch.get_num_threads(), "load_average_at_start": load, "input": [2, 3, SIZE, SIZE],
        "repeats": REPEATS, "rows": rows,
    })  # fmt: skip


if __name__ == "__main__":
    main()
