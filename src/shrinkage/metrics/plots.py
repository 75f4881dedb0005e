"""PNG figures of sparsity patterns and singular-value spectra.

Figures are built from ``matplotlib.figure.Figure`` with an explicit Agg canvas
instead of ``pyplot``: pyplot keeps a global registry of open figures and a global
backend, and a library should touch neither (a user's interactive session or
notebook keeps its own backend). Each PNG is written atomically.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from shrinkage.errors import UnsupportedModuleError
from shrinkage.metrics._common import atomic_write_bytes
from shrinkage.metrics.layers import LayerRow, rank_at_energy, singular_values

log = logging.getLogger(__name__)

_DPI = 120


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)  # attaches itself as figure.canvas; no pyplot involved
    return figure


def _save(figure: Figure, path: Path | str) -> Path:
    """Render to memory, write atomically, then release the figure's artists."""
    target = Path(path)
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", bbox_inches="tight")
    finally:
        # Without pyplot there is no figure manager to close; clearing drops the
        # artists (and their data arrays) right away instead of at garbage collection.
        figure.clear()
    atomic_write_bytes(target, buffer.getvalue())
    log.debug("wrote %s", target)
    return target


def _fraction(zero: Any, total: Any) -> float:
    # NaN makes matplotlib skip the bar: Linear layers have no shape columns.
    if zero is None or not total:
        return math.nan
    return zero / total


def plot_layer_sparsity(rows: Iterable[LayerRow | Mapping[str, Any]], path: Path | str) -> Path:
    """Grouped bars per layer: zero filters, channels, shape columns, elementwise sparsity."""
    dicts = [row.as_dict() if isinstance(row, LayerRow) else dict(row) for row in rows]
    series = {
        "zero filters": [_fraction(d.get("zero_filters"), d.get("filters")) for d in dicts],
        "zero channels": [_fraction(d.get("zero_channels"), d.get("channels")) for d in dicts],
        "zero shape columns": [_fraction(d.get("zero_shape_columns"), d.get("shape_columns")) for d in dicts],
        "elementwise sparsity": [d.get("sparsity", math.nan) for d in dicts],
    }
    figure = _new_figure(max(6.0, 1.1 * len(dicts) + 2.0), 4.0)
    axes = figure.add_subplot()
    width = 0.8 / len(series)
    for offset, (label, values) in enumerate(series.items()):
        positions = [i + (offset - (len(series) - 1) / 2) * width for i in range(len(dicts))]
        axes.bar(positions, values, width=width, label=label)
    axes.set_xticks(range(len(dicts)))
    axes.set_xticklabels([d.get("name") or "(root)" for d in dicts], rotation=45, ha="right")
    axes.set_ylim(0.0, 1.0)
    axes.set_ylabel("fraction zero")
    axes.set_title("Structured sparsity per layer")
    axes.legend(fontsize="small")
    return _save(figure, path)


def plot_weight_pattern(name: str, weight: Tensor, path: Path | str) -> Path:
    """Image of the non-zero pattern of a weight as filters x im2col columns.

    A conv weight ``(N, C, kh, kw)`` is shown as the ``N x (C*kh*kw)`` matrix (the
    layout of the structured-sparsity-learning paper's figures), a Linear weight as
    is. Non-zeros (``|w| > 0``) are dark, zeros white, so removed filters appear as
    white rows and removed channels/shape columns as white columns.
    """
    if not isinstance(weight, Tensor) or weight.dim() < 2:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise UnsupportedModuleError(f"plot_weight_pattern: {name}: weight {shape} is not a Linear/conv weight")
    matrix = weight.detach().reshape(weight.shape[0], -1)
    mask = (matrix.abs() > 0).to("cpu").float().numpy()
    rows, cols = mask.shape
    figure = _new_figure(min(12.0, 2.0 + cols / 40), min(10.0, 1.5 + rows / 40))
    axes = figure.add_subplot()
    axes.imshow(mask, cmap="Greys", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    axes.set_xlabel("im2col column (channel x kh x kw)" if weight.dim() > 2 else "input unit")
    axes.set_ylabel("filter (output unit)")
    density = mask.mean() if mask.size else 0.0
    axes.set_title(f"{name}: {rows}x{cols}, {density:.1%} non-zero")
    return _save(figure, path)


def plot_singular_values(
    weights: Mapping[str, Tensor], path: Path | str, energy: float | None = None
) -> Path:
    """Normalized singular-value spectra (``s_i / s_1``, log scale) per layer.

    With ``energy`` set, a marker shows the rank each layer keeps at that fraction of
    squared singular-value energy. All-zero weights have no spectrum and are skipped.
    """
    figure = _new_figure(7.0, 4.5)
    axes = figure.add_subplot()
    plotted = 0
    for name, weight in weights.items():
        s = singular_values(weight)
        if s.numel() == 0 or s[0] <= 0:
            log.info("plot_singular_values: %s is all zero; skipped", name)
            continue
        normalized = (s / s[0]).numpy()
        index = list(range(1, len(normalized) + 1))
        # Exact zeros cannot go on a log axis; they are dropped, not clipped.
        keep = normalized > 0
        (line,) = axes.plot([i for i, k in zip(index, keep) if k], normalized[keep], label=name)
        if energy is not None:
            rank = rank_at_energy(weight, energy)
            axes.plot([rank], [normalized[rank - 1]], marker="o", color=line.get_color())
        plotted += 1
    axes.set_yscale("log")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("singular value index")
    axes.set_ylabel("s_i / s_1")
    title = "Singular-value spectra"
    if energy is not None:
        title += f" (markers: rank at {energy:.0%} energy)"
    axes.set_title(title)
    if plotted:
        axes.legend(fontsize="small")
    return _save(figure, path)


def _column(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) if r.get(key) not in (None, "") else math.nan for r in rows]


def plot_budget_control(rows: Iterable[Mapping[str, Any]], path: Path | str) -> Path:
    """Training to a budget, per epoch: each rule's strength multiplier (log scale, top)
    and the estimated MAC fraction against the target (bottom).

    ``rows`` are the run's metrics rows (``metrics.csv``): the columns
    ``strength_scale[ruleN]``, ``estimated_macs``, ``target_macs`` and, if present,
    ``forecast_macs``; epochs are ``global_epoch`` (else ``epoch``). Rows without them
    (a run without a controller) leave gaps.
    """
    dicts = [dict(row) for row in rows]
    epochs = [float(d.get("global_epoch", d.get("epoch", i + 1))) for i, d in enumerate(dicts)]
    scales = sorted({k for d in dicts for k in d if k.startswith("strength_scale[")})
    figure = _new_figure(7.0, 6.0)
    top, bottom = figure.subplots(2, 1, sharex=True)
    for key in scales:
        values = [v if v > 0 else math.nan for v in _column(dicts, key)]  # 0 (warm-up) has no log
        top.plot(epochs, values, marker="o", label=key[len("strength_scale[") : -1])
    top.set_yscale("log")
    top.set_ylabel("strength multiplier")
    top.set_title("Training to a MAC budget")
    if scales:
        top.legend(fontsize="small")
    for key, label, style in (
        ("estimated_macs", "estimated", "-o"),
        ("forecast_macs", "forecast", ":"),
        ("target_macs", "target", "--"),
    ):
        if any(key in d for d in dicts):
            bottom.plot(epochs, _column(dicts, key), style, label=label)
    bottom.set_ylim(0.0, 1.05)
    bottom.set_ylabel("MACs / dense MACs")
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom.legend(fontsize="small")
    return _save(figure, path)
