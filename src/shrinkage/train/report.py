"""The report of a run: accuracy, size, latency, layers, training history and plots."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shrinkage.config import RunConfig
from shrinkage.data import ImageDataset, batches
from shrinkage.io import write_json, write_text
from shrinkage.metrics import (
    compare_latency,
    evaluate,
    latency_section,
    layer_latency,
    layer_table,
    plot_budget_control,
    plot_layer_sparsity,
    plot_singular_values,
    plot_weight_pattern,
    render_markdown,
    size_section,
)
from shrinkage.train.compaction import Compacted

log = logging.getLogger(__name__)

PLOTS = "plots"
#: what a run with a ``target:`` block (or ``shrinkage compress``) writes: the selected and
#: fine-tuned model (``shrinkage.save``), its results as JSON, and the same for people
TARGET_WEIGHTS = "target.safetensors"
TARGET_JSON = "target.json"
TARGET_MD = "target.md"
_LAYERS = (nn.Conv2d, nn.Linear)
#: timing budget per ``report.repeats``, in seconds: per model and batch size for the
#: side-by-side latency, in all for the per-layer timing (compare_latency's default)
_SECONDS_PER_REPEAT = 0.3


def _evaluation(model: nn.Module, test: ImageDataset, batch_size: int) -> dict[str, Any]:
    result = evaluate(model, batches(test, batch_size, shuffle=False))
    return {"accuracy": result.accuracy, "error": result.error, "loss": result.loss, "n": result.n}


def _run_section(config: RunConfig, run_dir: Path, command: str | None) -> dict[str, Any]:
    section = {
        "name": config.name,
        "model": config.model.name,
        "dataset": config.data.name + (f" (train limited to {config.data.limit_train})" if config.data.limit_train else ""),
        "config_path": str(run_dir / "config.yaml"),
        "seed": config.train.seed,
        "epochs": f"{config.train.epochs} regularized + {config.finetune.epochs} fine-tuning",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}".strip(),
    }
    if command:
        section["command"] = command
    return section


def _training_section(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    phases: dict[str, dict[str, Any]] = {}
    for row in rows:
        phases[row["phase"]] = {
            "epochs": row["epoch"],
            "test_accuracy": row["test_accuracy"],
            "train_loss": row["train_loss"],
            "time_s": sum(r["time_s"] for r in rows if r["phase"] == row["phase"]),
        }
    final = rows[-1] if rows else {}
    structure = {k: v for k, v in final.items() if k.count(".") >= 2}  # "<module>.<kind>.<stat>"
    return {"phases": phases, "final_structure": structure, "epochs": len(rows)}


def _training_markdown(training: dict[str, Any]) -> str:
    lines = ["## Training\n", "| phase | epochs | test accuracy | train loss | time |", "|---|---|---|---|---|"]
    for name, p in training["phases"].items():
        lines.append(f"| {name} | {p['epochs']} | {100 * p['test_accuracy']:.2f}% | "
                     f"{p['train_loss']:.4f} | {p['time_s']:.0f} s |")
    if training["final_structure"]:
        lines += ["", "| term statistic (end of training) | value |", "|---|---|"]
        lines += [f"| `{k}` | {v:.4g} |" for k, v in training["final_structure"].items()]
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "root"


def write_plots(run_dir: Path, dense: nn.Module, layers: list[dict[str, Any]], energy: float) -> list[str]:
    """Sparsity bars, one weight pattern per Conv2d/Linear, singular-value spectra."""
    out = run_dir / PLOTS
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_layer_sparsity(layers, out / "layer_sparsity.png")]
    weights = {name: m.weight.detach().cpu() for name, m in dense.named_modules() if isinstance(m, _LAYERS)}
    for name, weight in weights.items():
        paths.append(plot_weight_pattern(name, weight, out / f"weights_{_safe(name)}.png"))
    paths.append(plot_singular_values(weights, out / "singular_values.png", energy=energy))
    return [str(Path(p).relative_to(run_dir)) for p in paths]


def build_report(
    config: RunConfig,
    run_dir: Path,
    dense: nn.Module,
    compacted: Compacted,
    test: ImageDataset,
    rows: Sequence[dict[str, Any]],
    command: str | None = None,
) -> dict[str, Any]:
    """Measure dense vs compact side by side and write report.json, report.md, plots/."""
    compact = compacted.model
    dense.eval()
    compact.eval()
    device = test.images.device
    one = test.images[:1]
    image_shape = tuple(test.images.shape[1:])
    log.info("evaluating dense and compact models on the full test set (%d samples)", len(test))
    report: dict[str, Any] = {
        "run": _run_section(config, run_dir, command),
        "accuracy": {
            "dense": _evaluation(dense, test, config.data.test_batch_size),
            "compact": _evaluation(compact, test, config.data.test_batch_size),
        },
        "size": size_section(dense, compact, (one,)),
    }
    log.info("timing dense vs compact at batch sizes %s", list(config.report.latency_batch_sizes))
    comparison = compare_latency(
        {"dense": dense, "compact": compact},
        lambda n: torch.randn((n, *image_shape), device=device),
        batch_sizes=config.report.latency_batch_sizes,
        repeats=config.report.repeats,
        min_run_time=_SECONDS_PER_REPEAT,
    )
    report["latency"] = latency_section(comparison, "compact")
    report["layers"] = [row.as_dict() for row in layer_table(dense, compact, energy=config.compact.energy)]
    if config.report.layer_latency and config.report.latency_batch_sizes:
        batch = config.report.latency_batch_sizes[0]
        log.info("timing every layer of dense and compact alone at batch size %d", batch)
        timings = layer_latency(dense, compact, (torch.randn((batch, *image_shape), device=device),),
                                min_run_time=_SECONDS_PER_REPEAT * config.report.repeats)
        report["layer_latency"] = timings.as_dict()
    report["equivalence"] = {"max_abs_diff": compacted.max_abs_diff, "checked_on": compacted.checked_on
                             + (" (before factorization, which is lossy)" if compacted.factorized else "")}
    report["training"] = _training_section(rows)
    if config.report.plots:
        report["plots"] = write_plots(run_dir, dense, report["layers"], config.compact.energy)
        if any("estimated_macs" in row for row in rows):  # trained under the budget controller
            path = plot_budget_control(rows, run_dir / PLOTS / "budget_control.png")
            report["plots"].append(str(Path(path).relative_to(run_dir)))
    markdown = render_markdown(report) + "\n" + _training_markdown(report["training"])
    if config.target is not None:
        report["target"] = target_section(run_dir)
        markdown += "\n" + target_markdown(report["target"])
    if report.get("plots"):
        markdown += "\n## Plots\n\n" + "\n".join(f"![{Path(p).stem}]({p})" for p in report["plots"]) + "\n"
    # JSON first: report.md is what people open, and it should never describe a missing JSON
    write_json(run_dir / "report.json", report)
    write_text(run_dir / "report.md", markdown)
    log.info("wrote %s and %s", run_dir / "report.json", run_dir / "report.md")
    return report


# --- target: the budget and what the selected, fine-tuned model achieved -------------------

_METRICS = {"macs": "MACs (fraction of dense)", "params": "parameters (fraction of dense)"}


def target_section(run_dir: Path) -> dict[str, Any]:
    """The results ``shrinkage.train.compress`` wrote into ``run_dir`` (``target.json``)."""
    path = run_dir / TARGET_JSON
    try:
        section = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error)
        log.warning("the config has a target, but %s cannot be read (%s)", path, reason)
        return {"missing": f"{TARGET_JSON} cannot be read ({reason})"}
    return section if isinstance(section, dict) else {"missing": f"{TARGET_JSON} is not a JSON object"}


def _percent(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "–"


def _metric_name(key: str, budget: dict[str, Any]) -> str:
    if key == "latency_ms":
        return f"latency, batch {budget.get('batch_size', 1)} (ms)"
    if key == "macs" and budget.get("macs_of"):
        return f"MACs of the {budget['macs_of']} layers (fraction of dense)"
    return _METRICS.get(key, key)


def target_markdown(result: dict[str, Any], level: int = 2) -> str:
    """Target and achieved side by side, accuracy at each step, epochs (``target.md`` and
    the target section of ``report.md``)."""
    head = "#" * level
    if "missing" in result:
        return f"{head} Target\n\nNo target results: {result['missing']}.\n"
    budget = result.get("budget", {})
    method = result.get("settings", {}).get("method", "?")
    lines = [f"{head} Target ({method})\n", "| | target | achieved | met |", "|---|---|---|---|"]
    targeted = result.get("side_by_side", {})
    achieved = {**{k: row.get("achieved") for k, row in targeted.items()}, **result.get("achieved", {})}
    # MACs and parameters always (what a latency target cost in size is worth seeing); latency if targeted
    for key in ["macs", "params", *(k for k in targeted if k not in ("macs", "params"))]:
        row, got = targeted.get(key), achieved.get(key)
        target = "–" if row is None else f"{row['target']:.4g}"
        met = "–" if row is None else ("yes" if row.get("met") else "**no**")
        lines.append(f"| {_metric_name(key, budget)} | {target} | {'–' if got is None else f'{got:.4g}'} | {met} |")
    acc = result.get("accuracy", {})
    epochs = result.get("epochs", {})
    early = epochs.get("selected_after")
    trained = "dense" if early is None else f"trained (pruned to the budget after epoch {early})"
    lines += ["", f"| accuracy (full test set, {acc.get('n', '?')} images) | |", "|---|---|",
              f"| {trained} | {_percent(acc.get('dense'))} |", f"| after selection | {_percent(acc.get('selected'))} |",
              f"| after fine-tuning ({epochs.get('recovery', 0)} epochs) | {_percent(acc.get('finetuned'))} |"]
    base = result.get("baseline")
    if base:
        lines.append(f"| baseline `{base['run']}` | {_percent(base['accuracy'])} "
                     f"(final is {100 * base['drop']:.2f} points lower) |")
    recalibrated = acc.get("batchnorm_recalibrated")
    if recalibrated:
        lines += ["", f"After selection, BatchNorm statistics re-estimated on {recalibrated['batches']} training "
                  f"batches ({recalibrated['layers']} layers; no weight changed)."]
    dense = epochs.get("dense_run", {})
    text = (f"Epochs: dense run {dense.get('train', '?')} training + {dense.get('finetune', '?')} fine-tuning, "
            f"then {epochs.get('recovery', 0)} recovery: {epochs.get('total', '?')} in all")
    if base:
        same = "the same total" if base["epochs"] == epochs.get("total") else "not the same total"
        text += f"; baseline {base['epochs']} ({same}, {'regularized' if base.get('regularized') else 'unregularized'})"
    lines += ["", text + ".", "",
              f"Seed {result.get('seed', '?')}, torch {result.get('torch', '?')}, {result.get('time_s', 0):.0f} s; "
              f"model in `{TARGET_WEIGHTS}`."]
    if result.get("command"):
        lines.append(f"Command: `{result['command']}`")
    return "\n".join(lines) + "\n"
