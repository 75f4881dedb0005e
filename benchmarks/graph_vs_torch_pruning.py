"""Dependency graph + compaction: shrinkage vs Torch-Pruning, same zeroed structures, one run.

    pip install -c constraints.txt -e ".[bench]"
    python benchmarks/graph_vs_torch_pruning.py

For each torchvision model, a quarter of the channels of every coupled group set is
zeroed (seeded, exactly as a converged group Lasso leaves them, with random non-zero
BatchNorm statistics and shifts). Then, side by side in one process:

* shrinkage: ``shrinkage.compact(model, example)`` (trace, channel graph, plan, surgery,
  and its own equivalence check);
* Torch-Pruning: ``DependencyGraph().build_dependency`` and, for every conv and hidden
  linear, pruning the outputs whose weights are zero through ``get_pruning_group(...).prune()``.

Times are medians of repeats (wall clock, this machine's threads). Also recorded: the
parameters each leaves and the largest output difference from the unpruned model
(coupled groups include the BatchNorm entries, so no zeroed channel emits a constant
here and both should be exact). ``time_ratio`` is Torch-Pruning's time over ours: below
1 means Torch-Pruning is faster. Our time includes compact()'s own equivalence check
(one forward pass of each model). Results: results/graph/torch_pruning.json.
"""

from __future__ import annotations

import copy
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision
from torch import nn

import shrinkage
from shrinkage.compact import max_output_difference
from shrinkage.groups import CoupledChannels
from shrinkage.io import write_json

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "densenet121", "efficientnet_b0", "regnet_y_400mf")
SIZE, REPEATS, FRACTION = 64, 3, 0.25


def zeroed_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 1, generator=gen)
        chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        for g in CoupledChannels((1, 3, SIZE, SIZE)).build_for(model, chosen):
            matrix = g.gather()
            rows = torch.randperm(matrix.shape[0], generator=gen)[: int(matrix.shape[0] * FRACTION)]
            matrix[rows] = 0
            g.scatter_(matrix)
    return model


def torch_pruning_compact(model: nn.Module, x: torch.Tensor) -> nn.Module:
    model = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for layer in layers[:-1]:  # the last Linear's outputs are the classes
        zero = (layer.weight.detach().flatten(1).abs().amax(1) == 0).nonzero().flatten().tolist()
        if zero and len(zero) < layer.weight.shape[0]:
            prune = tp.prune_conv_out_channels if isinstance(layer, nn.Conv2d) else tp.prune_linear_out_channels
            group = graph.get_pruning_group(layer, prune, idxs=zero)
            if graph.check_pruning_group(group):
                group.prune()
    return model


def timed(fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(REPEATS):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    x = torch.randn(2, 3, SIZE, SIZE)
    rows = []
    for name in MODELS:
        model = zeroed_model(name)
        params = sum(p.numel() for p in model.parameters())
        ours_s, ours = timed(lambda: shrinkage.compact(model, (x,)))
        row = {"model": name, "params": params, "shrinkage": {
            "seconds": ours_s, "params": sum(p.numel() for p in ours.parameters()),
            "max_abs_diff": max_output_difference(model, ours, (x,))}}
        try:
            tp_s, theirs = timed(lambda: torch_pruning_compact(model, x))
            row["torch_pruning"] = {"seconds": tp_s, "params": sum(p.numel() for p in theirs.parameters()),
                                    "max_abs_diff": max_output_difference(model, theirs, (x,))}
            row["time_ratio"] = tp_s / ours_s
        except Exception as exc:  # report, do not hide, a peer's failure on a model
            row["torch_pruning"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        rows.append(row)
        tpr = row["torch_pruning"]
        print(f"{name:<18} params {params:>10,} | shrinkage {ours_s:6.2f}s -> {row['shrinkage']['params']:>10,} "
              f"diff {row['shrinkage']['max_abs_diff']:.1e} | torch-pruning "
              + (f"{tpr['seconds']:6.2f}s -> {tpr['params']:>10,} diff {tpr['max_abs_diff']:.1e}" if "seconds" in tpr
                 else tpr["error"]), flush=True)
    write_json(ROOT / "results" / "graph" / "torch_pruning.json", {
        "benchmark": "graph_vs_torch_pruning", "command": "python benchmarks/graph_vs_torch_pruning.py",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
        "torch": torch.__version__, "torchvision": torchvision.__version__, "torch_pruning": tp.__version__,
        "threads": torch.get_num_threads(), "input": [2, 3, SIZE, SIZE], "zeroed_fraction": FRACTION,
        "repeats": REPEATS, "rows": rows,
    })


if __name__ == "__main__":
    main()
