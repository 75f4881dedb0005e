"""README tables from ``results/speed/*.json`` (written by ``benchmarks/speed.py``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def load(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _speed_cell(comparison: dict[str, Any], name: str) -> str:
    value = comparison["speedup"].get(name)
    if value is None:
        return "–"
    return _x(value) + ("" if comparison.get("reliable", True) is not False else " ⚠")


def _conv_layer_mean(row: dict[str, Any], batch: int) -> float | None:
    """SSL's figure: the mean over conv layers of each layer's own speedup."""
    for timing in row["layers"]:
        if timing["batch_size"] == batch:
            values = [r["speedup"] for r in timing["rows"] if r["kind"] == "Conv2d" and r["speedup"]]
            return statistics.mean(values) if values else None
    return None


#: the channels_last copies benchmarks/speed.py times beside the NCHW models
DENSE_CL, COMPACT_CL = "dense (channels_last)", "compact (channels_last)"


def _ratio(comparison: dict[str, Any], reference: str, name: str) -> float | None:
    """How many times faster ``name`` ran than ``reference`` (medians of the same rounds)."""
    medians = comparison["median_ms"]
    if reference not in medians or name not in medians or not medians[name]:
        return None
    return medians[reference] / medians[name]


def summary_table(files: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| case | threads | MACs ÷ | batch | compact (fastest forms) | compact (fewest-MAC forms) | compact (forms timed at the large batch) | L1 sparse, same "
        "sparsity (CSR linear, COO conv) | speedup ÷ MACs ÷ | channels_last: compact vs dense | ÷ MACs ÷ "
        "| channels_last compact vs NCHW dense | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in files:
        for row in d["rows"]:
            for c in row["latency"]:
                fast = c["speedup"].get("compact")
                follows = "–" if fast is None else f"{fast / row['mac_ratio']:.2f}"
                load = "–" if c.get("load_average") is None else f"{c['load_average']:.2f}"
                both = _ratio(c, DENSE_CL, COMPACT_CL)
                both_follows = "–" if both is None else f"{both / row['mac_ratio']:.2f}"
                mark = "" if c.get("reliable", True) is not False else " ⚠"
                both_cell = "–" if both is None else _x(both) + mark
                lines.append(
                    f"| {row['description']} | {row['threads']} | {_x(row['mac_ratio'])} | {c['batch_size']} "
                    f"| {_speed_cell(c, 'compact')} | {_speed_cell(c, 'compact (fewest MACs)')} "
                    f"| {_speed_cell(c, 'compact (forms timed at the large batch)')} "
                    f"| {_speed_cell(c, 'L1 sparse (CSR)')} "
                    f"| {follows} | {both_cell} | {both_follows} | {_speed_cell(c, COMPACT_CL)} | {load} |"
                )
    return lines


#: width-pruned cases and their rounded variants (case name suffix -> kept widths)
ROUNDINGS = {"": "as selected", "_r8": "multiples of 8", "_r16": "multiples of 16"}


def alignment_table(files: list[dict[str, Any]]) -> list[str]:
    """What rounding kept widths is worth: each width-pruned model at its larger batch,
    speedup over the dense model and its ratio to the MAC ratio, NCHW and channels_last."""
    by_case = {d["rows"][0]["case"]: d for d in files if d["rows"]}
    lines = [
        "| model | kept widths | threads | batch | MACs ÷ | NCHW: speedup | ÷ MACs ÷ | channels_last: speedup | ÷ MACs ÷ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for base in sorted(c for c in by_case if c.endswith("_width")):
        for suffix, widths in ROUNDINGS.items():
            if base + suffix not in by_case:
                continue
            for row in by_case[base + suffix]["rows"]:
                c = max(row["latency"], key=lambda c: c["batch_size"])
                mark = "" if c.get("reliable", True) is not False else " ⚠"
                nchw, both = c["speedup"].get("compact"), _ratio(c, DENSE_CL, COMPACT_CL)
                cells = [f"{_x(v)}{mark} | " + ("–" if v is None else f"{v / row['mac_ratio']:.2f}") for v in (nchw, both)]
                lines.append(f"| {base.removesuffix('_width')} | {widths} | {row['threads']} | {c['batch_size']} "
                             f"| {_x(row['mac_ratio'])} | " + " | ".join(cells) + " |")
    return lines


def layer_table(d: dict[str, Any]) -> list[str]:
    """Per layer: MAC ratio, the form chosen and the speedup at every (threads, batch)."""
    columns = [(row["threads"], t["batch_size"]) for row in d["rows"] for t in row["layers"]]
    first = d["rows"][0]["layers"][-1]["rows"]
    lines = [
        "| layer | MACs ÷ | compact form | " + " | ".join(f"{t} thr, b{b}" for t, b in columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for i, layer in enumerate(first):
        cells = []
        for row in d["rows"]:
            for timing in row["layers"]:
                cells.append(_x(timing["rows"][i]["speedup"]))
        form = (layer.get("compact_form") or "").replace("|", "/")
        lines.append(f"| {layer['name']} | {_x(layer.get('mac_ratio'))} | `{form}` | " + " | ".join(cells) + " |")
    means = []
    for row in d["rows"]:
        for timing in row["layers"]:
            means.append(_x(_conv_layer_mean(row, timing["batch_size"])))
    lines.append("| mean over conv layers | | | " + " | ".join(means) + " |")
    return lines


def table(folder: Path) -> str:
    files = load(folder)
    if not files:
        return "_No speed results recorded yet: run `python benchmarks/speed.py`._\n"
    lines = [
        "### Speed: does it follow the MACs? (CPU)",
        "",
        "`python benchmarks/speed.py` (each JSON in `results/speed/` records its command). "
        "Random weights with the zeros a trained run leaves (see `benchmarks/speed_cases.py` for where each "
        "structure comes from), compacted exactly, and timed against the dense model in one process: shuffled "
        "short rounds, median, with a control (the dense model against an identical copy); ⚠ marks a "
        "comparison whose control was off by more than 5%. *MACs ÷* is the structure's own MAC ratio (every "
        "layer in its fewest-MAC form). *Fastest forms* lets `compact` time each layer's exact forms and keep "
        "the fastest. The L1 row zeroes the smallest weights of the dense model to the same per-layer "
        "sparsity and runs PyTorch's sparse kernels (the model's key in the JSON is `L1 sparse (CSR)`). "
        "*channels_last*: the dense and the compact model (fastest forms) converted with "
        "`model.to(memory_format=torch.channels_last)` and timed in the same rounds, on the same NCHW input; "
        "the first of those columns compares the two converted models, the last the converted compact model with "
        "the dense model as it was. Timed with the default OpenMP settings (each JSON records the thread "
        "environment: `OMP_WAIT_POLICY=PASSIVE` slows short parallel regions). No GPU was available: GPU speed is not measured.",
        "",
        *summary_table(files),
        "",
        "What rounding the kept widths is worth on this CPU (the width-pruned cases above at their larger batch; "
        "each rounding is its own `prune` selection, so the structures differ beyond the padding; "
        "*channels_last* compares the converted compact model with the converted dense one; "
        "`shrinkage.channel_multiple()` gives the multiple for the current device):",
        "",
        *alignment_table(files),
        "",
    ]
    for d in files:
        if d["rows"] and d["rows"][0].get("conv_only"):
            lines += [f"Per layer, {d['rows'][0]['description']} (`{d['command']}`):", "", *layer_table(d), ""]
    return "\n".join(lines)
