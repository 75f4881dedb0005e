"""Run reports: ``report.json`` (machine-readable) and ``report.md`` (for people).

Report dict schema (every section is optional; ``render_markdown`` skips what is
missing and prints "–" for missing values)::

    {
      "run": {"name", "model", "dataset", "config_path", "seed", "epochs",
              "command", "date", "torch", "threads", "machine"},
      "accuracy": {"dense": {"accuracy", "error", "loss", "n"},
                   "compact": {"accuracy", "error", "loss", "n"}},
      "size": {"dense": {"params", "macs"}, "compact": {"params", "macs"},
               "param_ratio", "mac_ratio",
               "conv_macs": {"dense", "compact", "ratio"}},
      "latency": [{"batch_size", "dense_ms", "compact_ms", "speedup",
                   "dense_min_ms", "compact_min_ms", "dense_spread", "compact_spread",
                   "rounds", "calls_per_round", "threads", "load_average", "cpu_count",
                   "control_ratio", "reliable", "reason"}, ...],
      "layers": [LayerRow.as_dict(), ...],
      "layer_latency": LayerLatency.as_dict(),
      "equivalence": {"max_abs_diff": float, "checked_on": str}
    }

Ratio convention: every ratio is ``dense / compact`` (``param_ratio``,
``mac_ratio``, ``conv_macs.ratio``), the same direction as ``speedup =
dense_ms / compact_ms``, so ">1" always means "the compact model is better". A MAC
ratio is a count of arithmetic saved, not a speedup: memory traffic, kernel
efficiency at small shapes and layers that MACs ignore decide the measured time,
which is why the two are reported in separate columns. A latency row with
``reliable: false`` failed its control (the dense model timed against an identical
copy of itself came out more than the tolerance off 1.0): its speedup is noise-sized,
and the markdown says so next to it, with the ``reason``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.nn.modules.conv import _ConvNd

from shrinkage.errors import ConfigError
from shrinkage.metrics import _format as fmt
from shrinkage.metrics._common import atomic_write_text, require_module
from shrinkage.metrics.latency import LatencyComparison
from shrinkage.metrics.layer_latency import layer_latency_markdown
from shrinkage.metrics.layers import layer_table_markdown
from shrinkage.metrics.size import MacCount, count_macs, count_parameters

log = logging.getLogger(__name__)

_RUN_KEYS = ("name", "model", "dataset", "config_path", "seed", "epochs",
             "command", "date", "torch", "threads", "machine")


def conv_macs(mac_count: MacCount, model: nn.Module, *, conv_names: Iterable[str] = ()) -> int:
    """MACs spent in convolution layers, comparable between a dense and a compact model.

    Counted units are the model's conv modules (``_ConvNd``) plus, whatever their
    type, the modules found under ``conv_names``. Pass the dense model's conv names
    when measuring the compact model: a conv replaced by a container (low-rank
    ``Sequential`` of two convs) or by any other module is then still counted at its
    position, so dense and compact sums cover the same part of the network. Per-module
    counts are inclusive, so a unit inside another unit is skipped (no double count).
    """
    require_module(model, "conv_macs")
    names = {name for name, _ in model.named_modules()}
    units = {name for name, module in model.named_modules() if isinstance(module, _ConvNd)}
    units |= names & set(conv_names)

    def has_unit_ancestor(name: str) -> bool:
        return any(other != name and (other == "" or name.startswith(other + ".")) for other in units)

    return sum(mac_count.per_module.get(name, 0) for name in units if not has_unit_ancestor(name))


def _ratio(dense: float, compact: float) -> float | None:
    return dense / compact if compact else None


def size_section(dense: nn.Module, compact: nn.Module, example_inputs: tuple[object, ...]) -> dict[str, Any]:
    """Build the ``"size"`` section (params, MACs, conv MACs, dense/compact ratios)."""
    dense_macs = count_macs(dense, example_inputs)
    compact_macs = count_macs(compact, example_inputs)
    dense_convs = [name for name, m in dense.named_modules() if isinstance(m, _ConvNd)]
    dense_conv = conv_macs(dense_macs, dense)
    compact_conv = conv_macs(compact_macs, compact, conv_names=dense_convs)
    dense_params, compact_params = count_parameters(dense), count_parameters(compact)
    return {
        "dense": {"params": dense_params, "macs": dense_macs.total},
        "compact": {"params": compact_params, "macs": compact_macs.total},
        "param_ratio": _ratio(dense_params, compact_params),
        "mac_ratio": _ratio(dense_macs.total, compact_macs.total),
        "conv_macs": {"dense": dense_conv, "compact": compact_conv, "ratio": _ratio(dense_conv, compact_conv)},
    }


def latency_section(comparisons: Sequence[LatencyComparison], compact: str | None = None) -> list[dict[str, Any]]:
    """Build the ``"latency"`` section: reference model vs ``compact`` (default: second model)."""
    rows = []
    for row in comparisons:
        names = list(row.median_ms)
        other = compact if compact is not None else (names[1] if len(names) > 1 else names[0])
        if other not in row.median_ms:
            raise ConfigError(f"latency_section: no model named {other!r} in the comparison")
        dense_stats, compact_stats = row.stats.get(row.reference), row.stats.get(other)
        rows.append({
            "batch_size": row.batch_size, "dense_ms": row.median_ms[row.reference],
            "compact_ms": row.median_ms[other], "speedup": row.speedup[other],
            "dense_min_ms": dense_stats.min_ms if dense_stats else None,
            "compact_min_ms": compact_stats.min_ms if compact_stats else None,
            "dense_spread": dense_stats.spread if dense_stats else None,
            "compact_spread": compact_stats.spread if compact_stats else None,
            "rounds": dense_stats.rounds if dense_stats else None,
            "calls_per_round": dense_stats.calls_per_round if dense_stats else None,
            "threads": row.threads, "load_average": row.load_average, "cpu_count": row.cpu_count,
            "control_ratio": row.control_ratio, "reliable": row.reliable, "reason": row.reason,
        })  # fmt: skip
    return rows


def _speedup(row: Mapping[str, Any]) -> str:
    """The speedup, marked where the control found the timing too noisy to trust."""
    text = fmt.ratio(row.get("speedup"))
    return f"{text} (unreliable)" if row.get("reliable") is False else text


def _get(mapping: Any, *keys: str) -> Any:
    """Nested lookup that returns None instead of raising on a missing/odd section."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _summary(report: Mapping[str, Any]) -> str:
    latency = [r for r in report.get("latency") or [] if isinstance(r, Mapping)]
    header = ["param ratio", "MAC ratio", "conv MAC ratio"]
    header += [f"speedup (batch {r.get('batch_size', '?')})" for r in latency]
    header += ["accuracy dense", "accuracy compact", "change"]
    dense_acc = _get(report, "accuracy", "dense", "accuracy")
    compact_acc = _get(report, "accuracy", "compact", "accuracy")
    row = [fmt.ratio(_get(report, "size", "param_ratio")), fmt.ratio(_get(report, "size", "mac_ratio")),
           fmt.ratio(_get(report, "size", "conv_macs", "ratio"))]
    row += [_speedup(r) for r in latency]
    row += [fmt.percent(dense_acc), fmt.percent(compact_acc), fmt.points(dense_acc, compact_acc)]
    return fmt.table(header, [row])


def _size_and_accuracy(report: Mapping[str, Any]) -> str:
    def line(label: str, path: tuple[str, ...], render: Any, ratio_key: tuple[str, ...] | None) -> list[str]:
        dense, compact = _get(report, *path[:1], "dense", *path[1:]), _get(report, *path[:1], "compact", *path[1:])
        if ratio_key:
            change = fmt.ratio(_get(report, *ratio_key))
        else:  # accuracy-like fractions: a change in points says more than a ratio
            change = fmt.points(dense, compact) if render is fmt.percent else fmt.MISSING
        return [label, render(dense), render(compact), change]

    rows = [
        line("parameters", ("size", "params"), fmt.count, ("size", "param_ratio")),
        line("MACs", ("size", "macs"), fmt.macs, ("size", "mac_ratio")),
        ["conv MACs", fmt.macs(_get(report, "size", "conv_macs", "dense")),
         fmt.macs(_get(report, "size", "conv_macs", "compact")), fmt.ratio(_get(report, "size", "conv_macs", "ratio"))],
        line("accuracy", ("accuracy", "accuracy"), fmt.percent, None),
        line("error", ("accuracy", "error"), fmt.percent, None),
        line("loss", ("accuracy", "loss"), fmt.number, None),
        line("samples", ("accuracy", "n"), fmt.count, None),
    ]
    return fmt.table(["", "dense", "compact", "dense / compact or change"], rows)


def _reliable(value: Any) -> str:
    return {True: "yes", False: "**no**"}.get(value, fmt.MISSING) if isinstance(value, bool) else fmt.MISSING


def _latency(report: Mapping[str, Any]) -> str:
    mac_ratio = fmt.ratio(_get(report, "size", "mac_ratio"))
    latency = [r for r in report.get("latency") or [] if isinstance(r, Mapping)]
    rows = [[str(r.get("batch_size", fmt.MISSING)), fmt.millis(r.get("dense_ms")), fmt.millis(r.get("compact_ms")),
             fmt.millis(r.get("dense_min_ms")), fmt.millis(r.get("compact_min_ms")),
             f"{fmt.percent(r.get('dense_spread'))} / {fmt.percent(r.get('compact_spread'))}",
             mac_ratio, _speedup(r), fmt.ratio(r.get("control_ratio")), _reliable(r.get("reliable"))]
            for r in latency]
    header = ["batch size", "dense ms", "compact ms", "dense min ms", "compact min ms", "spread (IQR / median)",
              "MAC ratio", "speedup", "control", "reliable"]
    note = ("\nMAC ratio counts arithmetic saved; speedup is measured wall-clock `dense_ms / compact_ms` "
            "(medians over short rounds, models interleaved in one run). They differ. The control times the "
            "dense model against an identical copy in the same rounds; it should come out 1.00×.\n")
    for r in latency:
        if r.get("reliable") is False:
            note += f"\n**Batch {r.get('batch_size', '?')} is unreliable:** {r.get('reason') or 'control failed'}.\n"
    runs = [r for r in latency if any(key in r for key in ("threads", "load_average", "rounds"))]
    if runs:
        note += (f"\nTimed with {runs[0].get('threads') or fmt.MISSING} threads on "
                 f"{runs[0].get('cpu_count') or fmt.MISSING} CPU cores; "
                 + "; ".join(f"batch {r.get('batch_size', '?')}: {r.get('rounds') or fmt.MISSING} rounds of "
                             f"{r.get('calls_per_round') or fmt.MISSING} calls, load average "
                             f"{fmt.number(r.get('load_average'), 3)} at the start" for r in runs) + ".\n")
    return fmt.table(header, rows) + note


def render_markdown(report: Mapping[str, Any]) -> str:
    """Render a report dict (schema in the module docstring) as markdown."""
    if not isinstance(report, Mapping):
        raise ConfigError(f"render_markdown: report must be a dict, got {type(report).__name__}")
    run = report.get("run") if isinstance(report.get("run"), Mapping) else {}
    parts = [f"# Report: {run.get('name') or 'unnamed run'}\n"]
    if run:
        keys = [k for k in _RUN_KEYS if k in run] + [k for k in run if k not in _RUN_KEYS]
        parts.append(fmt.table(["run", ""], [[k, f"`{run[k]}`" if k == "command" else str(run[k])] for k in keys]))
    if any(key in report for key in ("size", "accuracy", "latency")):
        parts += ["## Summary\n", _summary(report), "## Size and accuracy\n", _size_and_accuracy(report)]
    if report.get("latency"):
        parts += ["## Latency\n", _latency(report)]
    equivalence = report.get("equivalence")
    if isinstance(equivalence, Mapping):
        parts += ["## Equivalence\n", f"max |dense - compact| output difference: "
                  f"{fmt.number(equivalence.get('max_abs_diff'), 3)} "
                  f"(checked on {equivalence.get('checked_on') or fmt.MISSING})\n"]
    if report.get("layers"):
        parts += ["## Layers\n", layer_table_markdown(report["layers"])]
    if isinstance(report.get("layer_latency"), Mapping):
        parts += ["## Time per layer\n", layer_latency_markdown(report["layer_latency"])]
    return "\n".join(parts)


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # torch tensors and numpy scalars/arrays
        return value.tolist()
    raise ConfigError(f"write_report: value of type {type(value).__name__} is not JSON-serializable")


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    """Write ``run_dir/report.json`` (indent 2) and ``run_dir/report.md``, each atomically."""
    if not isinstance(report, Mapping):
        raise ConfigError(f"write_report: report must be a dict, got {type(report).__name__}")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"write_report: run directory {run_dir} is a file")
    # Render both before writing either, so a bad value cannot leave a lone report.json.
    text = json.dumps(report, indent=2, default=_json_default) + "\n"
    markdown = render_markdown(report)
    atomic_write_text(run_dir / "report.json", text)
    atomic_write_text(run_dir / "report.md", markdown)
    log.info("wrote %s and %s", run_dir / "report.json", run_dir / "report.md")
