"""Measured speed of removing whole structures: residual branches (depth) and attention heads.

Each row zeroes structures in a torchvision model as a trained group Lasso would leave
them, compacts it with ``shrinkage.compact`` (which checks the outputs), and times the
dense and the compact model side by side in one process (interleaved rounds, median of
repeats). Weights are random: only speed and exactness are measured here, not accuracy.

One control row converts every attention to ``HeadPrunedAttention`` while keeping all
heads, so the cost of our attention module against PyTorch's fused
``nn.MultiheadAttention`` is visible on its own.

Writes ``results/graph/structures.json``; ``python benchmarks/readme_table.py`` puts
it in the README.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
import torchvision
from torch import nn

import shrinkage
from shrinkage.compact import max_output_difference
from shrinkage.groups import Heads
from shrinkage.io import write_json
from shrinkage.layers import HeadPrunedAttention
from shrinkage.metrics import compare_latency, count_macs

ROOT = Path(__file__).resolve().parent.parent


def resnet18_without_branches() -> nn.Module:
    """The second block of every stage loses its branch (SSL depth): 4 of 8 branches."""
    model = torchvision.models.resnet18().eval()
    with torch.no_grad():
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            stage[1].conv2.weight.zero_()
    return model


def _zero_heads(model: nn.Module, keep_every: int) -> None:
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.MultiheadAttention):
                (g,) = Heads().build(name, m)
                matrix = g.gather()
                matrix[torch.arange(matrix.shape[0]) % keep_every != 0] = 0
                g.scatter_(matrix)


def vit_half_heads() -> nn.Module:
    model = torchvision.models.vit_b_16().eval()
    _zero_heads(model, 2)
    return model


def vit_half_heads_half_mlp() -> nn.Module:
    model = vit_half_heads()
    with torch.no_grad():
        for layer in model.encoder.layers:
            hidden = layer.mlp[0].out_features
            layer.mlp[0].weight[hidden // 2 :] = 0
            layer.mlp[0].bias[hidden // 2 :] = 0
    return model


def vit_all_heads_converted(model: nn.Module) -> nn.Module:
    """Control: every attention becomes HeadPrunedAttention with all heads kept."""
    new = copy.deepcopy(model)
    for name, m in list(new.named_modules()):
        if isinstance(m, nn.MultiheadAttention):
            parent, _, child = name.rpartition(".")
            every_head = torch.ones(m.num_heads, dtype=torch.bool)
            setattr(new.get_submodule(parent), child, HeadPrunedAttention.from_module(name, m, every_head))
    return new


SCENARIOS: dict[str, tuple[str, Callable[[], nn.Module], int, tuple[int, ...]]] = {
    "resnet18_depth": ("resnet18, 4 of 8 residual branches zeroed", resnet18_without_branches, 224, (1, 8)),
    "vit_b_16_heads": ("vit_b_16, 6 of 12 heads zeroed in every layer", vit_half_heads, 224, (1, 4)),
    "vit_b_16_heads_mlp": ("vit_b_16, 6 of 12 heads and half the MLP neurons zeroed", vit_half_heads_half_mlp, 224, (1, 4)),
    "vit_b_16_control": ("vit_b_16, all heads kept, HeadPrunedAttention in place of nn.MultiheadAttention", None, 224, (1, 4)),
}


def run(name: str, repeats: int) -> dict:
    description, build, size, batches = SCENARIOS[name]
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    if build is None:
        model = torchvision.models.vit_b_16().eval()
        small = vit_all_heads_converted(model)
    else:
        model = build()
        small = shrinkage.compact(model, (x,))
    diff = max_output_difference(model, small, (torch.randn(2, 3, size, size),))
    macs = count_macs(model, (x,)).total, count_macs(small, (x,)).total
    params = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in small.parameters())
    latency = compare_latency({"dense": model, "compact": small}, lambda n: torch.randn(n, 3, size, size),
                              batch_sizes=batches, repeats=repeats)  # fmt: skip
    row = {
        "name": name, "description": description, "input": [1, 3, size, size], "max_abs_diff": diff,
        "params": {"dense": params[0], "compact": params[1]}, "macs": {"dense": macs[0], "compact": macs[1]},
        "mac_ratio": macs[0] / macs[1],
        "latency": [{"batch_size": c.batch_size, "median_ms": c.median_ms, "speedup": c.speedup["compact"]} for c in latency],
    }  # fmt: skip
    print(f"{name:20s} MACs {macs[0] / macs[1]:.2f}x fewer, diff {diff:.1e}, "
          + ", ".join(f"b{c.batch_size}: {c.speedup['compact']:.2f}x" for c in latency), flush=True)  # fmt: skip
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = [run(name, args.repeats) for name in SCENARIOS]
    write_json(ROOT / "results" / "graph" / "structures.json", {
        "command": "python benchmarks/structures.py", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "rows": rows,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
