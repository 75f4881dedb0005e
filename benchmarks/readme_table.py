"""Regenerate the README's results section from the JSON files under results/.

    python benchmarks/readme_table.py          # rewrites README.md between the markers
    python benchmarks/readme_table.py --check  # exit 1 if README.md is out of date

Nothing in the table is typed by hand: every figure comes from a results file, which
names the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"


def _shapes(layers: list[dict]) -> str:
    """``conv1 1x20x5x5 → 1x7x5x5`` per layer: what compaction left of each weight."""
    parts = []
    for row in layers:
        before = "x".join(map(str, row["shape"]))
        after = " + ".join("x".join(map(str, s)) for s in row.get("compact_shapes") or []) or "removed"
        parts.append(f"{row['name']} {before} → {after}")
    return "<br>".join(parts)


def mnist_table(results: Path) -> str:
    files = sorted(results.glob("mnist/*.json"))
    if not files:
        return "_No MNIST results recorded yet: run `python benchmarks/mnist_results.py`._\n"
    order = {name: i for i, name in enumerate(_ORDER)}
    rows = [json.loads(f.read_text()) for f in files]
    rows.sort(key=lambda d: (order.get(d["name"].split("@")[0], 99), d["name"]))
    first = rows[0]
    lines = [
        "### MNIST (full 10,000-image test set)",
        "",
        "| experiment | epochs (reg. + fine-tune) | test error dense → compact | params | MAC ratio | conv MAC ratio "
        "| measured speedup, batch 1 | measured speedup, batch 64 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in rows:
        d["description"] = _relabel(d)
        r = d["report"]
        lat = {x["batch_size"]: x["speedup"] for x in r["latency"]}
        size = r["size"]
        lines.append(
            f"| {d['description']} | {r['run']['epochs'].replace(' regularized + ', ' + ').replace(' fine-tuning', '')} "
            f"| {_pct(r['accuracy']['dense']['error'])} → {_pct(r['accuracy']['compact']['error'])} "
            f"| {size['dense']['params']:,} → {size['compact']['params']:,} | {_x(size['mac_ratio'])} "
            f"| {_x(size['conv_macs']['ratio'])} | {_x(lat.get(1))} | {_x(lat.get(64))} |"
        )
    lines += ["", "Weight shapes before → after compaction (a `+` marks a layer replaced by two):", "",
              "| experiment | layers |", "|---|---|"]
    for d in rows:
        lines.append(f"| {d['description']} | {_shapes(d['report'].get('layers', []))} |")
    noise = [x["speedup"] for d in rows if d["name"].endswith("_baseline") for x in d["report"]["latency"]]
    lines += [
        "",
        "Ratios are dense ÷ compact (higher is better). MAC ratios are counted by "
        "`torch.utils.flop_counter`; speedups are measured, dense and compact timed side by side "
        "in one process (median of repeats) on the CPU below. A MAC ratio is not a speedup."
        + (f" The baseline rows time a model against an identical copy: their spread "
           f"({min(noise):.2f}x to {max(noise):.2f}x) is the noise of the measurement." if noise else ""),
        "",
        f"Machine: {first['machine']['platform']}, torch {first['torch']}, {first['threads']} threads. "
        "Every row: seed 0; the command that produced it is in its JSON file under `results/mnist/` "
        "(`python benchmarks/mnist_results.py --only NAME`).",
        "",
    ]
    return "\n".join(lines)


def _relabel(d: dict) -> str:
    """A factorized row whose fine-tuning ran *before* factorization says so: its compact
    error is that of the truncated model, never trained after the cut."""
    tuned_before = d.get("energy") is not None and not d["report"]["run"]["epochs"].endswith(" 0 fine-tuning")
    note = " (fine-tuned before factorization, not after)"
    return d["description"] + note if tuned_before and note not in d["description"] else d["description"]


_ORDER = (
    "lenet_baseline", "lenet_ssl_filters_channels", "lenet_ssl_shapes", "lenet_nuclear", "lenet_nuclear_sgl",
    "mlp_baseline", "mlp_ssl", "mlp_ssl_retrain", "resnet20_baseline", "resnet20_ssl_depth",
)


def torch_pruning_table(results: Path) -> str:
    path = results / "graph" / "torch_pruning.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    lines = [
        "### Dependency graph + compaction vs Torch-Pruning",
        "",
        f"Same zeroed structures ({d['zeroed_fraction']:.0%} of every coupled group set, input "
        f"{'x'.join(map(str, d['input']))}), both tools in one process, median of {d['repeats']} "
        f"(torch-pruning {d['torch_pruning']}, {d['threads']} threads; `{d['command']}`).",
        "",
        "| model | params | shrinkage: s → params (max diff) | Torch-Pruning: s → params (max diff) | TP time ÷ ours |",
        "|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        ours, theirs = r["shrinkage"], r["torch_pruning"]
        tp_cell = (f"{theirs['seconds']:.2f} → {theirs['params']:,} ({theirs['max_abs_diff']:.0e})"
                   if "seconds" in theirs else theirs["error"])
        lines.append(f"| {r['model']} | {r['params']:,} | {ours['seconds']:.2f} → {ours['params']:,} "
                     f"({ours['max_abs_diff']:.0e}) | {tp_cell} | {_x(r.get('time_ratio'))} |")
    lines += ["", "Our time is `compact()` with its default capture (`Capture.AUTO`: torch.export for these models; "
              "the torch.fx capture's times are in the next table) and includes its own check of the result "
              "(a forward pass of both models).", ""]
    return "\n".join(lines)


def capture_table(results: Path) -> str:
    """Capture + plan time by capture, against Torch-Pruning (results/graph/capture_time.json)."""
    path = results / "graph" / "capture_time.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    cases = (("export_plan", "torch.export plan"), ("export_check", "+ build and check"), ("fx_plan", "torch.fx plan"),
             ("fx_check", "+ build and check"), ("torch_pruning_plan", "Torch-Pruning plan"),
             ("torch_pruning_check", "+ prune and check"))  # fmt: skip
    lines = [
        "#### Capture + plan time (seconds, median of "
        f"{d['repeats']} interleaved rounds, {d['threads']} threads, load average {d['load_average_at_start']:.2f} "
        f"at the start; `{d['command']}`)",
        "",
        "| model | " + " | ".join(label for _, label in cases) + " |",
        "|---|" + "---|" * len(cases),
    ]
    for r in d["rows"]:
        cells = [f"{r['seconds'][k]:.3f}" if k in r["seconds"] else r["errors"].get(k, "–") for k, _ in cases]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    lines += ["", "*Plan*: capture the graph, find the channel spaces and decide what goes; *build and check*: "
              "`compact()` itself: also build the compacted model and compare its outputs with the original's (which "
              "the torch.fx capture computed while checking its trace); Torch-Pruning's: prune, then run both models "
              "to compare."]
    ratios = []
    for capture in ("export", "fx"):
        spans = []
        for step, theirs in (("plan", "torch_pruning_plan"), ("check", "torch_pruning_check")):
            r = [x["seconds"][f"{capture}_{step}"] / x["seconds"][theirs] for x in d["rows"]
                 if f"{capture}_{step}" in x["seconds"] and theirs in x["seconds"]]
            if r:
                spans.append(f"{min(r):.2f}x to {max(r):.2f}x ({step})")
        if spans:
            ratios.append(f"torch.export {' and '.join(spans)}" if capture == "export" else
                          f"torch.fx {' and '.join(spans)}")
    if ratios:
        lines += ["", "Our time ÷ Torch-Pruning's, over these models: " + "; ".join(ratios) + "."]
    lines.append("")
    return "\n".join(lines)


def structures_table(results: Path) -> str:
    path = results / "graph" / "structures.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    batches = sorted({x["batch_size"] for r in d["rows"] for x in r["latency"]})
    lines = [
        "### Removing whole structures: residual branches and attention heads",
        "",
        "Random weights with structures zeroed as a trained group Lasso leaves them, compacted by "
        "`shrinkage.compact` (outputs checked), dense and compact timed side by side in one process, "
        f"median of {d['repeats']} interleaved rounds (torch {d['torch']}, {d['threads']} threads; `{d['command']}`).",
        "",
        "| model | params dense → compact | MACs ÷ | max diff | " + " | ".join(f"speedup b{b}" for b in batches) + " |",
        "|---|---|---|---|" + "---|" * len(batches),
    ]
    for r in d["rows"]:
        speed = {x["batch_size"]: x["speedup"] for x in r["latency"]}
        lines.append(
            f"| {r['description']} | {r['params']['dense']:,} → {r['params']['compact']:,} | {_x(r['mac_ratio'])} "
            f"| {r['max_abs_diff']:.0e} | " + " | ".join(_x(speed.get(b)) for b in batches) + " |"
        )
    lines += [
        "",
        "The last row is a control: no head removed, only `nn.MultiheadAttention` replaced by "
        "`HeadPrunedAttention`; its ratio is the cost of our attention module plus measurement noise.",
        "",
    ]
    return "\n".join(lines)


def budget_table(results: Path) -> str:
    import budget_report  # next to this script

    return budget_report.table(budget_report.aggregate(budget_report.load(results / "budget")))


def speed_table(results: Path) -> str:
    import speed_report  # next to this script

    return speed_report.table(results / "speed")


def overhead_table(results: Path) -> str:
    """The markdown that ``benchmarks/train_overhead.py`` wrote beside its JSON, each part
    followed by the command, threads and thread environment its JSON records."""
    found = []
    for name in ("lenet", "resnet20", "rank"):
        md, meta = results / "overhead" / f"{name}.md", results / "overhead" / f"{name}.json"
        if not md.exists():
            continue
        part = md.read_text().strip()
        if meta.exists():
            data = json.loads(meta.read_text())
            env = ", ".join(f"{k}={v}" for k, v in data.get("environment", {}).items()) or "default thread settings"
            part += (f"\n\n`{data['command']}` ({data.get('threads')} threads, {env}, "
                     f"load average {data['load_average_at_start'][0]:.2f} at the start, {data['date'][:10]})")
        found.append(part)
    if not found:
        return ""
    return "### Training overhead per regularizer (CPU)\n\n" + "\n\n".join(found) + "\n"


def zoo_table(results: Path) -> str:
    path = results / "zoo.json"
    if not path.exists():
        return ""
    d = json.loads(path.read_text())
    v = d["versions"]
    lines = [
        "### Zoo: exact compaction of torchvision, timm and Hugging Face models",
        "",
        f"Random weights, {d['zeroed_fraction']:.0%} of every coupled channel group set and of the attention heads "
        "zeroed as a converged group Lasso leaves them (random BatchNorm statistics and biases), then "
        "`shrinkage.compact` and, on the same model, Torch-Pruning (its dependency graph pruning every zero output). "
        f"Exact: equal outputs on a fresh input (relative {d['rtol']:g}) and fewer parameters. "
        f"torch {v['torch']}, torchvision {v['torchvision']}, timm {v['timm']}, transformers {v['transformers']}, "
        f"torch-pruning {v['torch_pruning']}; `{d['command']}`.",
        "",
        "| family | models | exact | nothing removable | no groups | zeroed, not removed | refused | wrong | raw error "
        "| timeout / skipped | Torch-Pruning ran | its errors | its exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for family, t in d["totals"].items():
        ours, theirs = t["shrinkage"], t["torch_pruning"]
        lines.append(
            f"| {family} | {t['models']} | {ours['exact']} | {ours['nothing_removable']} | {ours['no_groups']} "
            f"| {ours['not_removed']} | {ours['refused']} | {ours['wrong']} | {ours['raw']} "
            f"| {ours['timeout'] + ours['skipped']} | {theirs['ok']} | {theirs['error']} | {theirs['exact']} |"
        )
    by_cause: dict[str, list[str]] = {}
    for cause, models in d["causes"].items():  # the first capture's reason; the JSON adds the other's
        by_cause.setdefault(cause.split(" (other capture: ")[0], []).extend(models)
    if by_cause:
        lines += ["", "What stops compaction, by cause (the models it stops):", "", "| cause | models |", "|---|---|"]
    else:
        lines += ["", "Nothing stopped compaction on any of these models."]
    for cause, models in sorted(by_cause.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        escaped = cause.replace("|", "\\|")  # a pipe in a message would split the cell
        lines.append(f"| {escaped} | {', '.join(sorted(models))} |")
    lines += [
        "",
        "No groups: no capture could build the coupled groups, so nothing was zeroed. Rows, parameters, "
        "shares of removable channels and times per model: `results/zoo.json`.",
        "",
    ]
    return "\n".join(lines)


def _cifar_missing(summary: Path) -> list[str]:
    """A line naming the planned rows that have no result yet (their configs exist)."""
    import cifar_results  # next to this script

    done = {row["method"] for row in json.loads(summary.read_text())["rows"]} if summary.exists() else set()
    missing = [row.label for row in cifar_results.ROWS if row.key not in done]
    if not missing:
        return []
    return ["", "Not trained yet (configs and commands in `benchmarks/cifar_results.py`): " + "; ".join(missing) + "."]


def _int8_missing(cifar: Path) -> list[str]:
    """A line naming shrinkage's rows (``cifar_results.ROWS``; the Torch-Pruning rows have
    no run directory to quantize) of which the int8 table holds no seed at all: one seed
    per method is what the int8 table is for (what quantization adds on top of each kind
    of compressed model), seeds are the float table's."""
    import cifar_results  # next to this script

    summary, int8 = cifar / "summary.json", cifar / "int8.json"
    if not summary.exists() or not int8.exists():
        return []
    ours = {row.key for row in cifar_results.ROWS}
    quantized = {row["run"] for row in json.loads(int8.read_text())["rows"]}
    missing = [row["method"] for row in json.loads(summary.read_text())["rows"] if row["method"] in ours
               and not any(f"{row['method']}-s{seed}" in quantized for seed in row["seeds"])]  # fmt: skip
    if not missing:
        return []
    return ["", "Not quantized yet: " + ", ".join(missing) + " (`python benchmarks/cifar_int8.py "
            "results/cifar10/models/RUN.safetensors ...`, timed on an idle machine)."]  # fmt: skip


def cifar_table(results: Path) -> str:
    """ResNet-20 on CIFAR-10 (JPEG copy): the summary ``benchmarks/cifar_results.py`` wrote,
    the chart, how to re-check a row, int8 on top and the training set-up measured."""
    summary = results / "cifar10" / "summary.md"
    if not summary.exists():
        return ""
    lines = [
        "### ResNet-20 on CIFAR-10 (JPEG copy)",
        "",
        "The papers' CIFAR-10 experiment on the JPEG copy of CIFAR-10 (quality 75, lossy: absolute accuracies are "
        "not comparable with published CIFAR-10 numbers, so every method runs here beside a baseline trained here "
        "with the same schedule: SGD, lr 0.1, cosine, batch 128, pad-4 crop and flip, weight decay 1e-4). "
        "Regularized rows train 18 epochs and fine-tune 2; the baseline trains 20; rows compressed after the fact "
        "start from the 20-epoch baseline and fine-tune 2 more (22 in all); the early-selection row prunes after "
        "epoch 4 of the baseline's own 20 and trains the other 16 with the removed weights at zero, 20 in all. "
        "Commands: "
        "`python benchmarks/cifar_results.py` (its docstring lists each run's command), Torch-Pruning rows "
        "`python benchmarks/cifar_torch_pruning.py`.",
        "",
        summary.read_text().strip(),
        *_cifar_missing(results / "cifar10" / "summary.json"),
        "",
        "![accuracy vs MACs](results/cifar10/accuracy_vs_macs.png)",
        "",
        "Every row's model is committed in `results/cifar10/models/`; re-check one without retraining, e.g. "
        "`shrinkage evaluate results/cifar10/models/baseline-s0.safetensors --model resnet20 --data cifar10-jpeg` "
        "(with `SHRINKAGE_DATA_DIR` pointing at the directory holding `cifar10-jpeg/`).",
    ]
    int8, speed = results / "cifar10" / "int8.md", results / "train_speed" / "resnet20.md"
    if int8.exists():
        lines += ["", int8.read_text().strip(), *_int8_missing(results / "cifar10")]
    if speed.exists():
        lines += ["", "#### Training set-up on this CPU (`python benchmarks/train_speed.py`)", "", speed.read_text().strip()]
    return "\n".join(lines) + "\n"


def render(results: Path) -> str:
    cifar = cifar_table(results)
    return ("## Results\n\n" + (cifar + "\n" if cifar else "") + budget_table(results) + "\n" + mnist_table(results) + "\n"
            + speed_table(results) + "\n" + overhead_table(results) + "\n" + torch_pruning_table(results) + "\n"
            + capture_table(results) + "\n" + structures_table(results) + ("\n" + zoo if (zoo := zoo_table(results)) else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"README.md lacks the {START} / {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render(ROOT / 'results')}{END}{tail}"
    if args.check:
        return 0 if new == text else 1
    readme.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
