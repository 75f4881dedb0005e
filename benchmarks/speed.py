"""Does the speed follow the MACs? Structured removal timed against the dense model.

    python benchmarks/speed.py                         # every case, 1 and 2 threads
    python benchmarks/speed.py --only alexnet_conv_ssl lenet_ssl_filters --threads 1
    python benchmarks/speed.py --quick                 # every path, tiny budgets (no results written)

For each case of ``benchmarks/speed_cases.py`` (a dense model and the zeros a trained
run would leave) and each thread count, in one process:

* compacts the zeroed model twice (once per case, at torch's default thread count):
  with each layer's form chosen by a short measurement (``Measured``, the default) and by the fewest MACs (``ByMacs``: the
  structure's own MAC count, what SSL's speedup should follow); each is checked
  exact on a fresh input (``max |compact - zeroed|``);
* where the case asks, builds the non-structured baseline: the dense model with its
  smallest weights zeroed to the same per-layer sparsity as the structured zeros,
  run with PyTorch's sparse CSR kernels (``shrinkage.compact.sparse``);
* for image models, also a channels_last copy of the dense and of the compact model
  (``model.to(memory_format=torch.channels_last)``: oneDNN then computes in NHWC with no
  reorder per layer, which changes what odd widths cost);
* times dense, compact and the baseline side by side at each batch size, in shuffled
  short rounds with a control (the dense model against an identical copy; a ratio
  off by more than 5% marks the row unreliable), and times every layer alone on its
  captured input (``shrinkage.metrics.layer_latency``).

Writes ``results/speed/<case>.json``; ``python benchmarks/readme_table.py`` puts the
summary in the README. Time on an idle machine: the load average at the start of each
comparison is recorded beside it.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shrinkage  # noqa: E402
from shrinkage.compact import CompactOptions, max_output_difference  # noqa: E402
from shrinkage.compact.choice import ByMacs, Measured  # noqa: E402
from shrinkage.compact.sparse import matched_sparsity, sparsify  # noqa: E402
from shrinkage.io import write_json  # noqa: E402
from shrinkage.metrics import compare_latency, count_macs, count_parameters  # noqa: E402
from shrinkage.metrics.layer_latency import layer_latency  # noqa: E402
from shrinkage.metrics.timing import thread_environment  # noqa: E402
from speed_cases import CASES, Case  # noqa: E402
from speed_report import COMPACT_CL, DENSE_CL  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "speed"


def _forms(zeroed: nn.Module, x: torch.Tensor, policy: Any) -> nn.Module:
    return shrinkage.compact(zeroed, (x,), options=CompactOptions(choose_by=policy)).eval()


def _sizes(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    macs = count_macs(model, (x,))
    return {"macs": macs.total, "params": count_parameters(model)}


def build(case: Case) -> dict[str, nn.Module]:
    """Every model of ``case`` on the CPU, in eval mode, checked exact where it must be."""
    dense, zeroed, compact = case.build()
    x = torch.randn(1, *case.input_shape)
    models = {"dense": dense.eval()}
    if zeroed is None:  # factorized: the compact model is an approximation of the dense one
        models["compact"] = compact
        return _with_channels_last(models, case)
    models["compact"] = _forms(zeroed, x, Measured())
    models["compact (fewest MACs)"] = _forms(zeroed, x, ByMacs())
    # the forms timed at the large batch: the fastest form at batch 1 can lose at 16
    models["compact (forms timed at the large batch)"] = _forms(zeroed, x, Measured(batch_size=max(case.batch_sizes)))
    if case.l1_baseline:
        models["_l1"] = matched_sparsity(zeroed, dense).eval()
        models["L1 sparse (CSR)"] = sparsify(models["_l1"], min_sparsity=0.05).eval()
    models["_zeroed"] = zeroed.eval()
    return _with_channels_last(models, case)


def _with_channels_last(models: dict[str, nn.Module], case: Case) -> dict[str, nn.Module]:
    if len(case.input_shape) == 3:  # images: the weights' layout decides the convolutions' (NCHW input or not)
        models[DENSE_CL] = copy.deepcopy(models["dense"]).to(memory_format=torch.channels_last).eval()
        models[COMPACT_CL] = copy.deepcopy(models["compact"]).to(memory_format=torch.channels_last).eval()
    return models


def measure(case: Case, built: dict[str, nn.Module], threads: int, budget: float) -> dict[str, Any]:
    torch.manual_seed(0)
    models = dict(built)
    zeroed, l1_reference = models.pop("_zeroed", None), models.pop("_l1", None)
    fresh = torch.randn(2, *case.input_shape)  # not the example compaction saw
    one = fresh[:1]
    exact = {}
    for name in ("compact", "compact (fewest MACs)", "compact (forms timed at the large batch)", COMPACT_CL):
        if zeroed is not None and name in models:
            exact[name] = max_output_difference(zeroed, models[name], (fresh,))
    if l1_reference is not None:
        exact["L1 sparse (CSR)"] = max_output_difference(l1_reference, models["L1 sparse (CSR)"], (fresh,))
    # the flop counter does not see inside sparse kernels: the L1 model reports its nonzeros instead
    sizes = {name: _sizes(m, one) for name, m in models.items() if name != "L1 sparse (CSR)"}
    if l1_reference is not None:
        sizes["L1 sparse (CSR)"] = {"nonzero_weights": sum(int(p.ne(0).sum()) for p in l1_reference.parameters())}
    comparisons = compare_latency(models, lambda n: torch.randn(n, *case.input_shape), case.batch_sizes,
                                  repeats=1, min_run_time=budget, threads=threads)  # fmt: skip
    layers = []
    for batch in case.batch_sizes:
        timing = layer_latency(models["dense"], models["compact"], (torch.randn(batch, *case.input_shape),),
                               min_run_time=budget * 2, threads=threads)  # fmt: skip
        layers.append(timing.as_dict())
    reference = sizes["dense"]["macs"]
    structural = sizes.get("compact (fewest MACs)", sizes["compact"])["macs"]
    row = {
        "case": case.name, "description": case.description, "threads": threads, "input": list(case.input_shape),
        "conv_only": case.conv_only, "max_abs_diff": exact, "sizes": sizes,
        "mac_ratio": reference / structural,
        "latency": [c.as_dict() for c in comparisons], "layers": layers,
    }  # fmt: skip
    print(f"{case.name} threads={threads}: MACs {row['mac_ratio']:.2f}x fewer; "
          + "; ".join(f"b{c.batch_size}: " + ", ".join(f"{n} {s:.2f}x" for n, s in c.speedup.items() if n != "dense"
                                                        and s is not None)
                      + ("" if c.reliable else " (unreliable)") for c in comparisons), flush=True)  # fmt: skip
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="cases (default: all)")
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per model and batch size")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, nothing written")
    args = parser.parse_args()
    budget = 0.02 if args.quick else args.budget
    names = args.only or list(CASES)
    for name in names:
        case = CASES[name]
        torch.manual_seed(0)
        built = build(case)  # once: the forms were chosen at the machine's default thread count
        rows = [measure(case, built, t, budget) for t in args.threads]
        if args.quick:
            continue
        write_json(OUT / f"{name}.json", {
            "benchmark": "speed", "command": "python benchmarks/speed.py --only " + name
            + " --threads " + " ".join(map(str, args.threads)) + f" --budget {args.budget:g}",
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
            "gpu": None, "environment": thread_environment(), "rows": rows,
        })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
