"""ResNet-20 on CIFAR-10 (JPEG copy): gather the runs into results/cifar10/, time them, summarize.

    python benchmarks/cifar_results.py                 # gather finished runs, then summarize
    python benchmarks/cifar_results.py --latency       # also time every model against the dense one
                                                       # (idle machine: nothing else running)

The runs themselves are ordinary CLI runs under ``runs/cifar/`` (``--runs``), one per
method and seed, each named ``<row>-s<seed>`` (see ``ROWS`` for the command of each):

- ``baseline``: ``shrinkage train configs/cifar10_resnet20_baseline.yaml`` (20 epochs);
- ``ssl_depth``, ``ssl_width50``, ``ssl_width25``, ``lowrank50``: the regularized configs
  (18 epochs + 2 of fine-tuning; the width and low-rank rows meet their MAC budget through
  the controller, the exact selection and the target block's fine-tuning);
  ``ssl_width50focus`` the same with the group Lasso on the weakest groups only
  (``target.penalize: weakest``);
- ``ssl_width50r8``: ``shrinkage compress`` of the ``ssl_width50`` run's regularized model
  with the kept widths rounded to multiples of 8 (its own 2 epochs of recovery instead of
  the run's: 20 in all), to see what aligned widths are worth in speed; ``ssl_width50r16``
  the same with multiples of 16 (oneDNN's channel block on an AVX-512 CPU);
  ``ssl_width50lr3`` / ``ssl_width25lr3`` / ``ssl_width50focuslr3``: the same selection with its 2 recovery epochs
  at lr 0.001 instead of 0.01 (the regularized run ends annealed to lr 0.00076; at 0.01
  the recovery raised the training loss and lost 1-2 points);
- ``prune50`` / ``svd50``: ``shrinkage compress`` of a baseline (20 epochs, then 2
  epochs of fine-tuning after selection: 22 in all, two more than the regularized rows),
  from the baseline's committed model file with its config, so that these rows can be
  redone without retraining the baseline (seed-0 rows were made from the run directory
  itself, the same model: their JSON keeps that command);
  ``prune50bn`` the same with the BatchNorm statistics re-estimated on 32 training
  batches right after selection (``compress``'s default since it exists; the ``prune50``
  rows were recorded before it); ``prune50norm`` the same pruning ranked by group norms instead of the Taylor estimate
  (an ablation of the damage estimate); ``prune50kd`` the same pruning with its 2 epochs
  of recovery distilled from the dense baseline (weight 0.5, temperature 4);
- ``prune50early``: the baseline's config and schedule with the pruning of ``prune50``
  done after epoch 4 of the 20 (``target.select_after_epochs``), the removed weights held
  at zero for the other 16: the same 20 epochs as the baseline, no recovery epochs;
  ``prune25early`` the same to 25% of the MACs;
- ``svd50lk``: ``svd50`` with the ranks chosen by the product of the layers' kept energy
  shares (``RankCriterion.LOG_KEPT``, the default since; ``svd50`` keeps the summed lost
  energy it was recorded with), BatchNorm statistics kept as in ``svd50``;
- Torch-Pruning rows: written by ``benchmarks/cifar_torch_pruning.py`` as
  ``results/cifar10/torch_pruning-*.json`` and read from there.

A run recorded before ``compress`` re-estimated BatchNorm statistics after selection (its
default since then) keeps its behaviour in the command its JSON gives: ``--recalibrate-batches
0`` (``compress``) or ``--set target.recalibrate_batches=0`` (``train``) is appended, as its
``target.json`` records no re-estimation.

Gathering writes ``results/cifar10/<row>-s<seed>.json`` (accuracy on all 10,000 test
images, parameters and MACs against the dense ResNet-20, training time, the commands)
and copies the final model to ``results/cifar10/models/<row>-s<seed>.safetensors``
(:func:`shrinkage.save` format; ``shrinkage evaluate`` re-checks it). ``--latency`` times
every final model against the dense baseline in one interleaved comparison per batch
size (1 and 64, with the identical-copy control of :func:`shrinkage.metrics.compare_latency`),
the whole of it ``--latency-runs`` times (default 3; the median speed-up is reported and
each model's range across the runs kept), into ``results/cifar10/latency.json``. The
summary (``summary.json``, ``summary.md``, the accuracy-vs-MACs chart
``accuracy_vs_macs.png``) aggregates seeds: mean ± sample std, and
each drop is taken against the baseline of the same seed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "cifar10"
MODEL_DIR = "models"
TITLE = "CIFAR-10 (JPEG copy)"


@dataclass(frozen=True)
class Row:
    """One method: where its runs are, which model file is its result, how it was made."""

    key: str
    label: str
    #: "compact": the run's compacted model (report.json); "target": the budget's (target.json)
    result: str
    command: str
    budget_macs: float | None = None
    #: for a row compressed from another row's model: that row (whose training it reuses)
    source_row: str = "baseline"


def _reselected(key: str, label: str, source: str, macs: float, flags: str) -> Row:
    """A row selected again, with other settings, from another row's regularized run."""
    origin = "the focus run" if source.endswith("focus") else "the SSL width run"
    return Row(key, f"{label} (selection from {origin})", "target",
               f"shrinkage compress runs/cifar/{source}-s{{seed}} --target macs={macs:g} {flags} "
               "--out runs/cifar/{run}", macs, source_row=source)  # fmt: skip


ROWS = (
    Row("baseline", "baseline (plain SGD, 20 epochs)", "compact",
        "shrinkage train configs/cifar10_resnet20_baseline.yaml --set train.seed={seed} --out runs/cifar/{run}"),
    Row("ssl_depth", "SSL depth (group Lasso per residual branch), controller to 77.5% MACs", "target",
        "shrinkage train configs/cifar10_resnet20_ssl_depth.yaml --set train.seed={seed} --out runs/cifar/{run}",
        0.775),
    Row("ssl_width50", "SSL width, controller to 50% MACs", "target",
        "shrinkage train configs/cifar10_resnet20_ssl_width.yaml --set train.seed={seed} --out runs/cifar/{run}",
        0.5),
    Row("ssl_width25", "SSL width, controller to 25% MACs", "target",
        "shrinkage train configs/cifar10_resnet20_ssl_width.yaml --set train.seed={seed} --set target.macs=0.25 "
        "--out runs/cifar/{run}", 0.25),
    Row("ssl_width50focus", "SSL width, controller to 50% MACs, group Lasso on the weakest groups only (focus)",
        "target", "shrinkage train configs/cifar10_resnet20_ssl_width.yaml --set train.seed={seed} "
        "--set target.penalize=weakest --out runs/cifar/{run}", 0.5),
    _reselected("ssl_width50r8", "SSL width to 50% MACs, kept widths multiples of 8", "ssl_width50", 0.5,
                "--round-to 8 --finetune-epochs 2 --lr 0.01"),
    _reselected("ssl_width50r16", "SSL width to 50% MACs, kept widths multiples of 16", "ssl_width50", 0.5,
                "--round-to 16 --finetune-epochs 2 --lr 0.01"),
    _reselected("ssl_width50lr3", "SSL width to 50% MACs, recovery at lr 0.001", "ssl_width50", 0.5,
                "--finetune-epochs 2 --lr 0.001"),
    _reselected("ssl_width50focuslr3", "SSL width to 50% MACs, focus, recovery at lr 0.001", "ssl_width50focus", 0.5,
                "--finetune-epochs 2 --lr 0.001"),
    _reselected("ssl_width25lr3", "SSL width to 25% MACs, recovery at lr 0.001", "ssl_width25", 0.25,
                "--finetune-epochs 2 --lr 0.001"),
    Row("lowrank50", "compression-aware low rank to 50% MACs (ranks by the summed lost energy)", "target",
        "shrinkage train configs/cifar10_resnet20_lowrank.yaml --set train.seed={seed} "
        "--set target.rank_criterion=lost --out runs/cifar/{run}", 0.5),
    Row("prune50", "plain + shrinkage prune (Taylor) to 50% MACs + 2 epochs", "target",
        "shrinkage compress results/cifar10/models/baseline-s{seed}.safetensors "
        "--config configs/cifar10_resnet20_baseline.yaml --set train.seed={seed} "
        "--target macs=0.5 --finetune-epochs 2 --lr 0.01 "
        "--method prune --out runs/cifar/{run}", 0.5),
    Row("prune50bn", "plain + shrinkage prune (Taylor) to 50% MACs, BatchNorm re-estimated + 2 epochs", "target",
        "shrinkage compress results/cifar10/models/baseline-s{seed}.safetensors "
        "--config configs/cifar10_resnet20_baseline.yaml --set train.seed={seed} "
        "--target macs=0.5 --finetune-epochs 2 --lr 0.01 "
        "--method prune --out runs/cifar/{run}", 0.5),
    Row("prune50kd", "plain + shrinkage prune (Taylor) to 50% MACs + 2 epochs distilled from the dense model", "target",
        "shrinkage compress results/cifar10/models/baseline-s{seed}.safetensors "
        "--config configs/cifar10_resnet20_baseline.yaml --set train.seed={seed} "
        "--target macs=0.5 --finetune-epochs 2 --lr 0.01 --distill 0.5 --temperature 4 "
        "--method prune --out runs/cifar/{run}", 0.5),
    Row("prune50norm", "plain + shrinkage prune (group norms) to 50% MACs + 2 epochs", "target",
        "shrinkage compress results/cifar10/models/baseline-s{seed}.safetensors "
        "--config configs/cifar10_resnet20_baseline.yaml --set train.seed={seed} "
        "--target macs=0.5 --finetune-epochs 2 --lr 0.01 "
        "--method prune --importance norm --out runs/cifar/{run}", 0.5),
    Row("prune50early", "plain training, shrinkage prune (Taylor) to 50% MACs after epoch 4, zeros held to epoch 20",
        "target", "shrinkage train configs/cifar10_resnet20_baseline.yaml --set train.seed={seed} "
        "--set target.macs=0.5 --set target.select_after_epochs=4 --set target.recalibrate_batches=0 "
        "--out runs/cifar/{run}", 0.5),
    Row("prune25early", "plain training, shrinkage prune (Taylor) to 25% MACs after epoch 4, zeros held to epoch 20",
        "target", "shrinkage train configs/cifar10_resnet20_baseline.yaml --set train.seed={seed} "
        "--set target.macs=0.25 --set target.select_after_epochs=4 --set target.recalibrate_batches=0 "
        "--out runs/cifar/{run}", 0.25),
    Row("svd50", "plain + SVD to 50% MACs + 2 epochs (ranks by the summed lost energy)", "target",
        "shrinkage compress results/cifar10/models/baseline-s{seed}.safetensors "
        "--config configs/cifar10_resnet20_baseline.yaml --set train.seed={seed} "
        "--target macs=0.5 --finetune-epochs 2 --lr 0.01 "
        "--method factorize --rank-criterion lost --out runs/cifar/{run}", 0.5),
    Row("svd50lk", "plain + SVD to 50% MACs + 2 epochs (ranks by the product of kept shares)", "target",
        "shrinkage compress results/cifar10/models/baseline-s{seed}.safetensors "
        "--config configs/cifar10_resnet20_baseline.yaml --set train.seed={seed} "
        "--target macs=0.5 --finetune-epochs 2 --lr 0.01 --recalibrate-batches 0 "
        "--method factorize --out runs/cifar/{run}", 0.5),
)  # fmt: skip


#: what a command appends to reproduce a run recorded before ``compress`` re-estimated the
#: BatchNorm statistics after selection (its default since then), by CLI subcommand
_WITHOUT_RECALIBRATION = {"compress": " --recalibrate-batches 0", "train": " --set target.recalibrate_batches=0"}


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _training_seconds(run_dir: Path) -> float | None:
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        return None
    with open(metrics, newline="") as handle:
        return round(sum(float(r["time_s"]) for r in csv.DictReader(handle)), 1)


def _epoch_times(run_dir: Path) -> dict[str, float] | None:
    """Min / median / max seconds per epoch: on a shared machine the total says little alone."""
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        return None
    with open(metrics, newline="") as handle:
        times = sorted(float(r["time_s"]) for r in csv.DictReader(handle))
    return {"min": times[0], "median": statistics.median(times), "max": times[-1]} if times else None


def branches_removed(model_file: Path) -> int:
    """Residual branches the saved ResNet-20 no longer computes (its first conv has no
    output channel left). Counted on the model itself: a branch whose weights are not all
    zero but whose output is constant (the last BatchNorm shift alone) is removed by
    compaction, though training's zero-group count does not include it."""
    import shrinkage
    from shrinkage.zoo.resnet_cifar import resnet20

    model = shrinkage.load(model_file, resnet20())
    blocks = [m for name, m in model.named_modules() if name.count(".") == 1 and name.startswith("layer")]
    return sum(int(getattr(block.conv1, "out_channels", 1) == 0) for block in blocks)


def gather_run(row: Row, run_dir: Path, seed: int, out: Path) -> dict[str, Any] | None:
    """The normalized result of one finished run, its model copied beside it; None if unfinished."""
    name = f"{row.key}-s{seed}"
    if row.result == "compact":
        report_path = run_dir / "report.json"
        if not report_path.is_file():
            return None
        report = _read(report_path)
        size = report["size"]
        result: dict[str, Any] = {
            "accuracy": report["accuracy"]["compact"]["accuracy"],
            "accuracy_dense": report["accuracy"]["dense"]["accuracy"],
            "test_images": report["accuracy"]["compact"]["n"],
            "params": size["compact"]["params"], "dense_params": size["dense"]["params"],
            "macs": size["compact"]["macs"], "dense_macs": size["dense"]["macs"],
            "max_abs_diff_after_compaction": report["equivalence"]["max_abs_diff"],
            "residual_branches_removed": branches_removed(run_dir / "compact.safetensors"),
            "epochs": report["training"]["epochs"],
            "train_time_s": _training_seconds(run_dir),
            "epoch_time_s": _epoch_times(run_dir),
        }  # fmt: skip
        model_file = run_dir / "compact.safetensors"
    else:
        target_path = run_dir / "target.json"
        if not target_path.is_file():
            return None
        target = _read(target_path)
        size = target["size"]
        recovery = sum(float(r.get("time_s", 0.0)) for r in target["recovery"]["rows"])
        trained = _training_seconds(run_dir)
        result = {
            "accuracy": target["accuracy"]["finetuned"],
            "accuracy_selected": target["accuracy"]["selected"],
            "accuracy_dense": target["accuracy"]["dense"],
            "test_images": target["accuracy"]["n"],
            "params": size["final"]["params"], "dense_params": size["dense"]["params"],
            "macs": size["final"]["macs_per_image"], "dense_macs": size["dense"]["macs_per_image"],
            "budget_met": target["met"], "selection": target["selection"],
            "epochs": target["epochs"]["total"],
            "train_time_s": round((trained or 0.0) + recovery, 1),
            "train_time_note": "training of this run plus recovery" if trained is not None
                               else f"recovery only (the dense model's training is the {row.source_row} row's)",
        }  # fmt: skip
        model_file = run_dir / "target.safetensors"
        if row.key == "ssl_depth":
            result["residual_branches_removed"] = branches_removed(model_file)
    command = row.command.format(seed=seed, run=run_dir.name)
    without = _WITHOUT_RECALIBRATION[command.split()[1]]
    if row.result == "target" and "batchnorm_recalibrated" not in target["accuracy"] and without not in command:
        command += without  # recorded before selection re-estimated BatchNorm
    models = out / MODEL_DIR
    models.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, models / f"{name}.safetensors")
    result.update({
        "method": row.key, "label": row.label, "seed": seed, "budget_macs": row.budget_macs,
        "params_fraction": result["params"] / result["dense_params"],
        "macs_fraction": result["macs"] / result["dense_macs"],
        "dataset": TITLE, "model": "resnet20",
        "command": command,
        "model_file": f"results/cifar10/{MODEL_DIR}/{name}.safetensors",
        "evaluate": f"shrinkage evaluate results/cifar10/{MODEL_DIR}/{name}.safetensors --model resnet20 "
                    "--data cifar10-jpeg",
    })  # fmt: skip
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def gather(runs: Path, out: Path) -> list[dict[str, Any]]:
    found = []
    for row in ROWS:
        for run_dir in sorted(runs.glob(f"{row.key}-s*")):
            seed_text = run_dir.name.rsplit("-s", 1)[1]
            if not run_dir.is_dir() or not seed_text.isdigit():
                continue
            result = gather_run(row, run_dir, int(seed_text), out)
            print(f"{run_dir.name}: {'gathered' if result else 'not finished'}")
            if result:
                found.append(result)
    return found


def from_torch_pruning(data: dict[str, Any], stem: str) -> dict[str, Any]:
    """A row of ``benchmarks/cifar_torch_pruning.py`` in this script's form."""
    target = data["target"]["macs"]
    sparse = "sparse_training" in data
    method = f"tp_{data['method']}{'_sl' if sparse else ''}{round(100 * target)}"
    name = data["files"]["model"]
    fine = data["finetune"]
    return {
        "method": method, "seed": data["seed"], "budget_macs": target,
        "label": f"Torch-Pruning {data['method'].replace('_', ' ')}"
                 f"{' after its sparse training' if sparse else ''} to {100 * target:g}% MACs "
                 f"+ {fine['epochs']} epochs",
        "accuracy": data["accuracy"]["finetuned"], "accuracy_selected": data["accuracy"]["pruned"],
        "accuracy_dense": data["accuracy"]["dense"], "test_images": data["accuracy"]["n"],
        "params": data["size"]["pruned"]["params"], "dense_params": data["size"]["dense"]["params"],
        "macs": data["size"]["pruned"]["macs_per_image"], "dense_macs": data["size"]["dense"]["macs_per_image"],
        "params_fraction": data["achieved"]["params"], "macs_fraction": data["achieved"]["macs"],
        "epochs": (data["sparse_training"]["recipe"]["epochs"] if sparse else 20) + fine["epochs"],
        "train_time_s": round(sum(v for k, v in data["time_s"].items() if k != "total"), 1),
        "train_time_note": "pruning and recovery" + (" after sparse training" if sparse else ""),
        "dataset": TITLE, "model": "resnet20", "command": data["command"], "source": f"{stem}.json",
        "model_file": f"results/cifar10/{name}",
        "evaluate": f"shrinkage evaluate results/cifar10/{name} --model resnet20 --data cifar10-jpeg",
    }  # fmt: skip


def load_rows(out: Path) -> list[dict[str, Any]]:
    """Every gathered row plus the Torch-Pruning rows (their own script writes them)."""
    rows = []
    for path in sorted(out.glob("*.json")):
        if path.name in ("summary.json", "latency.json", "int8.json"):
            continue
        data = _read(path)
        if data.get("complete", True) is False:
            continue
        rows.append(from_torch_pruning(data, path.stem) if data.get("benchmark") == "cifar_torch_pruning" else data)
    return rows


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}  # fmt: skip


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_path(out: Path, row: dict[str, Any]) -> Path:
    # model_file is the path in the repository; under --out the same name relative to it
    return out / row["model_file"].removeprefix("results/cifar10/")


def timed_now(rows: list[dict[str, Any]], latency: dict[str, Any] | None, out: Path) -> dict[str, Any] | None:
    """``latency`` without the timings of models whose file changed since they were timed
    (a rerun of a row replaces its model: its old speed-up would describe another model)."""
    if latency is None:
        return None
    timed = latency.get("models", {})
    current = {f"{r['method']}-s{r['seed']}": file_digest(model_path(out, r)) for r in rows}
    keep = {name for name, digest in current.items() if timed.get(name) == digest}
    batches = [{**b, "speedup": {k: v for k, v in b["speedup"].items() if k in keep}} for b in latency["batches"]]
    return {**latency, "batches": batches}


def summarize(rows: list[dict[str, Any]], latency: dict[str, Any] | None) -> dict[str, Any]:
    baseline = {r["seed"]: r["accuracy"] for r in rows if r["method"] == "baseline"}
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    order = [row.key for row in ROWS] + sorted(m for m in by_method if m not in {row.key for row in ROWS})
    summary = []
    for method in order:
        rs = by_method.get(method)
        if not rs:
            continue
        drops = [baseline[r["seed"]] - r["accuracy"] for r in rs if r["seed"] in baseline]
        selected = [r["accuracy_selected"] for r in rs if "accuracy_selected" in r]
        entry: dict[str, Any] = {
            "method": method, "label": rs[0]["label"], "seeds": sorted(r["seed"] for r in rs),
            "accuracy": _stats([r["accuracy"] for r in rs]),
            "accuracy_selected": _stats(selected),
            "drop_vs_baseline": _stats(drops),
            "params_fraction": _stats([r["params_fraction"] for r in rs]),
            "macs_fraction": _stats([r["macs_fraction"] for r in rs]),
            "epochs": rs[0].get("epochs"),
            "train_time_s": _stats([r["train_time_s"] for r in rs if r.get("train_time_s")]),
        }  # fmt: skip
        if "residual_branches_removed" in rs[0]:
            entry["residual_branches_removed"] = _stats([r["residual_branches_removed"] for r in rs])
        if latency is not None:
            entry["speedup"] = {
                str(b["batch_size"]): _stats([b["speedup"][f"{method}-s{r['seed']}"] for r in rs
                                              if f"{method}-s{r['seed']}" in b["speedup"]])
                for b in latency["batches"]
            }  # fmt: skip
        summary.append(entry)
    timing = None
    if latency is not None:
        timing = {k: v for k, v in latency.items() if k != "batches"}
        keys = ("batch_size", "control_ratio", "control_ratios", "reliable", "reason", "speedup_range")
        timing["controls"] = [{k: b[k] for k in keys if k in b} for b in latency["batches"]]
    return {"dataset": TITLE, "model": "resnet20", "rows": summary, "latency": timing}


def _widest_ranges(latency: dict[str, Any], count: int = 3) -> list[str]:
    """The models whose speed-up moved most between the timing runs, per batch size."""
    lines = []
    for c in latency.get("controls", []):
        ranges = c.get("speedup_range") or {}
        if not ranges:
            continue
        widest = sorted(ranges.items(), key=lambda kv: kv[1][0] / kv[1][1])[:count]
        text = ", ".join(f"{name} {low:.2f}x to {high:.2f}x" for name, (low, high) in widest)
        lines.append(f"Batch {c['batch_size']}: widest ranges across the runs: {text}.")
    return lines


def _pm(stats: dict[str, float] | None, scale: float = 100.0, digits: int = 2) -> str:
    if not stats:
        return "–"
    text = f"{scale * stats['mean']:.{digits}f}"
    return text + (f" ± {scale * stats['std']:.{digits}f}" if stats["n"] > 1 else "")


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"ResNet-20 on {TITLE}: test accuracy on all 10,000 test images, mean ± std over seeds (no ± where "
        "one seed ran); drop = the baseline's accuracy of the same seed minus the row's, in points; MACs and "
        "parameters as a percentage of the dense ResNet-20's.",
        "",
        "| method | seeds | epochs | accuracy (%) | right after selection (%) | drop (points) | MACs | params "
        "| speed-up b1 | speed-up b64 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        speed = r.get("speedup") or {}
        lines.append(
            f"| {r['label']} | {len(r['seeds'])} | {r['epochs']} | {_pm(r['accuracy'])} | "
            f"{_pm(r['accuracy_selected'])} | "
            f"{_pm(r['drop_vs_baseline'])} | {_pm(r['macs_fraction'], 100, 1)}% | "
            f"{_pm(r['params_fraction'], 100, 1)}% | "
            f"{_speed(speed.get('1'))} | {_speed(speed.get('64'))} |"
        )
    branches = [r for r in summary["rows"] if r["method"] == "ssl_depth"]
    for r in branches:
        lines.append("")
        lines.append(f"{r['label']}: {r['residual_branches_removed']['mean']:g} residual branches removed "
                     f"(of 9) on average.")  # fmt: skip
    latency = summary.get("latency")
    if latency:
        lines += ["", f"Speed-ups: dense / model median latency, {latency.get('note', '')}."]
        if any(not any((r.get("speedup") or {}).values()) for r in summary["rows"]):
            lines.append("A speed-up shown as – was not timed: the row's model is newer than the last "
                         "`python benchmarks/cifar_results.py --latency` (idle machine).")
        for c in latency.get("controls", []):
            verdict = "reliable" if c["reliable"] else "UNRELIABLE"
            each = c.get("control_ratios") or []
            runs = f" (runs: {', '.join(f'{r:.3f}x' for r in each)})" if len(each) > 1 else ""
            lines.append(f"Batch {c['batch_size']}: control (dense vs an identical copy) {c['control_ratio']:.3f}x"
                         f"{runs}, {verdict}.")  # fmt: skip
        lines += _widest_ranges(latency)
    else:
        lines += ["", "Speed-ups not measured yet (`python benchmarks/cifar_results.py --latency` on an idle machine)."]
    return "\n".join(lines) + "\n"


def _speed(stats: dict[str, float] | None) -> str:
    if not stats:
        return "–"
    return f"{stats['mean']:.2f}x" + (f" ± {stats['std']:.2f}" if stats["n"] > 1 else "")


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(r)
    for rs in by_method.values():
        macs = [100 * r["macs_fraction"] for r in rs]
        acc = [100 * r["accuracy"] for r in rs]
        ax.scatter(macs, acc, label=rs[0]["label"], s=28)
    ax.set_xlabel("MACs (% of dense ResNet-20)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"ResNet-20 on {TITLE}: every seed of every method")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measure_latency(rows: list[dict[str, Any]], out: Path, runs: int = 3) -> dict[str, Any]:
    """Every gathered model against the dense ResNet-20, interleaved, at batch 1 and 64;
    the whole comparison ``runs`` times. A model's speed-up is the median over the runs:
    on a shared two-core machine the batch-64 ratios moved by up to 1.5x between idle
    runs whose identical-copy controls were all within 4% of 1.0, so one run cannot be
    trusted alone; each model's range across the runs is kept beside it."""
    import shrinkage
    from shrinkage.metrics import compare_latency
    from shrinkage.metrics.timing import load_average, thread_environment
    from shrinkage.zoo.resnet_cifar import resnet20

    models: dict[str, torch.nn.Module] = {"dense": resnet20().eval()}
    digests = {}
    for r in rows:
        name = f"{r['method']}-s{r['seed']}"
        models[name] = shrinkage.load(model_path(out, r), resnet20()).eval()
        digests[name] = file_digest(model_path(out, r))
    load = load_average()
    each: dict[int, list[dict[str, Any]]] = {1: [], 64: []}
    for _ in range(runs):  # the batch sizes alternate, so a slow stretch of time hits both
        for batch in each:
            (comparison,) = compare_latency(models, lambda n: torch.randn(n, 3, 32, 32), batch_sizes=[batch], repeats=5)
            each[batch].append(comparison.as_dict())
    batches = [_over_runs(batch, timed) for batch, timed in each.items()]
    result = {
        "load_average_at_start": load, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "environment": thread_environment(), "runs": runs,
        "note": f"{torch.get_num_threads()} threads, median of {runs} complete runs, each interleaving every model "
                "with the dense one, "
                + (f"load average {load:.2f} at the start" if load is not None else "load average unknown"),
        "command": f"python benchmarks/cifar_results.py --latency --latency-runs {runs}", "batches": batches,
        "models": digests,  # SHA-256 of each timed file: a rerun row is shown untimed until timed again
    }  # fmt: skip
    (out / "latency.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def _over_runs(batch: int, timed: list[dict[str, Any]]) -> dict[str, Any]:
    """One batch size's comparisons from several runs: the median speed-up per model, its
    range, and the controls (reliable only when every run's control was)."""
    names = timed[0]["speedup"]
    ratios = [t["control_ratio"] for t in timed]
    unreliable = [t["reason"] for t in timed if not t["reliable"]]
    return {
        "batch_size": batch,
        "speedup": {n: statistics.median(t["speedup"][n] for t in timed) for n in names},
        "speedup_range": {n: [min(t["speedup"][n] for t in timed), max(t["speedup"][n] for t in timed)] for n in names},
        "control_ratio": statistics.median(ratios), "control_ratios": ratios,
        "reliable": not unreliable,
        "reason": unreliable[0] if unreliable else f"every run's control within 5% of 1.0 ({min(ratios):.3f}x to "
                                                   f"{max(ratios):.3f}x)",
        "runs": timed,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "cifar")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--latency", action="store_true", help="time every model (idle machine)")
    parser.add_argument("--latency-runs", type=int, default=3, help="complete timing runs; the median is reported")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    gather(args.runs, args.out)
    rows = load_rows(args.out)
    if not rows:
        print("no finished runs found", file=sys.stderr)
        return 1
    if args.latency_runs < 1:
        parser.error(f"--latency-runs must be at least 1, got {args.latency_runs}")
    latency = measure_latency(rows, args.out, args.latency_runs) if args.latency else (
        _read(args.out / "latency.json") if (args.out / "latency.json").is_file() else None)
    summary = summarize(rows, timed_now(rows, latency, args.out))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.md").write_text(markdown(summary))
    chart(rows, args.out / "accuracy_vs_macs.png")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
