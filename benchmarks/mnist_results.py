"""Train, compact and measure every MNIST experiment of the README; one JSON per result.

    python benchmarks/mnist_results.py                 # all experiments (about 20 min on 2 cores)
    python benchmarks/mnist_results.py --only lenet_ssl_filters_channels

Each experiment trains from its config under configs/ (full MNIST training set), then
compacts (and, for the low-rank runs, factorizes at each listed energy) and writes
results/mnist/<name>.json with the machine, torch version, threads, command and date.
Accuracy is on the full 10,000-image test set; latency is dense vs compact side by side
in one process, median of repeats. Run directories go to runs/bench/ (not committed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from shrinkage.config import load_config
from shrinkage.io import write_json
from shrinkage.train.compaction import compact_model, example_inputs
from shrinkage.train.pipeline import load_run, run_experiment
from shrinkage.train.report import build_report

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "mnist"


@dataclass(frozen=True)
class Experiment:
    name: str
    config: str
    description: str
    energies: tuple[float, ...] = ()  # low-rank runs: one result per energy


EXPERIMENTS = (
    Experiment("lenet_baseline", "lenet_baseline.yaml", "LeNet baseline"),
    Experiment("lenet_ssl_filters_channels", "lenet_ssl_filters_channels.yaml", "LeNet, SSL filters + channels"),
    Experiment("lenet_ssl_shapes", "lenet_ssl_shapes.yaml", "LeNet, SSL filter shapes + filters"),
    Experiment("lenet_nuclear", "lenet_nuclear.yaml", "LeNet, nuclear norm", (0.8, 0.9)),
    Experiment("lenet_nuclear_sgl", "lenet_nuclear_sgl.yaml", "LeNet, nuclear norm + sparse group Lasso", (0.8, 0.9)),
    Experiment("mlp_baseline", "mlp_baseline.yaml", "MLP baseline"),
    Experiment("mlp_ssl", "mlp_ssl.yaml", "MLP, SSL input pixels + neurons"),
    Experiment("mlp_ssl_retrain", "mlp_ssl_retrain.yaml", "MLP, SSL input pixels + neurons, retrained structure"),
    Experiment("resnet20_baseline", "resnet20_baseline.yaml", "ResNet-20 baseline"),
    Experiment("resnet20_ssl_depth", "resnet20_ssl_depth.yaml", "ResNet-20, SSL depth (residual branches)"),
)


def _meta(exp: Experiment, energy: float | None) -> dict:
    return {
        "benchmark": "mnist_results",
        "name": exp.name + (f"@{energy:.2f}" if energy is not None else ""),
        "description": exp.description + (f", factorized at {energy:.0%} energy" if energy is not None else ""),
        "config": f"configs/{exp.config}",
        "energy": energy,
        "command": f"python benchmarks/mnist_results.py --only {exp.name}",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "python": sys.version.split()[0]},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _keep(report: dict) -> dict:
    kept = {k: report[k] for k in ("run", "accuracy", "size", "latency", "equivalence", "training", "layers") if k in report}
    path = Path(kept["run"].get("config_path", ""))
    if path.is_absolute() and path.is_relative_to(ROOT):  # results name no paths of the machine they ran on
        kept["run"] = {**kept["run"], "config_path": str(path.relative_to(ROOT))}
    return kept


def run(exp: Experiment, runs_dir: Path) -> list[Path]:
    config = load_config(ROOT / "configs" / exp.config)
    run_dir = runs_dir / exp.name
    command = f"python benchmarks/mnist_results.py --only {exp.name}"
    written = []
    if not exp.energies:
        report = run_experiment(config, run_dir, command=command)
        path = RESULTS / f"{exp.name}.json"
        write_json(path, {**_meta(exp, None), "report": _keep(report)})
        return [path]
    run_experiment(config, run_dir, command=command)  # trains once; energies are post-processing
    trained = load_run(run_dir)
    for energy in exp.energies:
        cfg = dataclasses.replace(config, compact=dataclasses.replace(config.compact, factorize=True, energy=energy))
        compacted = compact_model(trained.model, cfg.compact, example_inputs(trained.test.images))
        out = run_dir / f"energy-{energy:.2f}"
        out.mkdir(exist_ok=True)
        report = build_report(cfg, out, trained.model, compacted, trained.test, trained.rows, command)
        path = RESULTS / f"{exp.name}@{energy:.2f}.json"
        write_json(path, {**_meta(exp, energy), "report": _keep(report)})
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="experiment names (default: all)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    known = {e.name: e for e in EXPERIMENTS}
    unknown = sorted(set(args.only or []) - set(known))
    if unknown:
        parser.error(f"unknown experiment(s) {unknown}; known: {sorted(known)}")
    for exp in (known[n] for n in args.only) if args.only else EXPERIMENTS:
        for path in run(exp, args.runs_dir):
            data = json.loads(path.read_text())
            r = data["report"]
            conv = r["size"]["conv_macs"]["ratio"]
            print(f"{data['name']:<36} error {100 * r['accuracy']['dense']['error']:.2f}% -> "
                  f"{100 * r['accuracy']['compact']['error']:.2f}%  params x{r['size']['param_ratio']:.2f}  "
                  f"MACs x{r['size']['mac_ratio']:.2f}  " + (f"conv MACs x{conv:.2f}  " if conv else "")
                  + "  ".join(f"speedup@{x['batch_size']} x{x['speedup']:.2f}" for x in r["latency"]), flush=True)


if __name__ == "__main__":
    main()
