"""Metrics for dense vs compacted models: size, MACs, latency (whole model and per layer),
per-layer structure, accuracy, plots and run reports."""

from shrinkage.metrics.accuracy import Evaluation, evaluate
from shrinkage.metrics.latency import Latency, LatencyComparison, compare_latency, measure_latency
from shrinkage.metrics.layer_latency import LayerLatency, LayerTiming, layer_latency, layer_latency_markdown
from shrinkage.metrics.layers import (
    LayerRow,
    group_sparsity,
    layer_table,
    layer_table_markdown,
    rank_at_energy,
    singular_values,
)
from shrinkage.metrics.plots import plot_budget_control, plot_layer_sparsity, plot_singular_values, plot_weight_pattern
from shrinkage.metrics.report import (
    conv_macs,
    latency_section,
    render_markdown,
    size_section,
    write_report,
)
from shrinkage.metrics.size import MacCount, count_macs, count_parameters
from shrinkage.metrics.timing import Timer, TimingStats, timing_stats, wall_timer

__all__ = [
    "Evaluation",
    "Latency",
    "LatencyComparison",
    "LayerLatency",
    "LayerRow",
    "LayerTiming",
    "MacCount",
    "Timer",
    "TimingStats",
    "compare_latency",
    "conv_macs",
    "count_macs",
    "count_parameters",
    "evaluate",
    "group_sparsity",
    "latency_section",
    "layer_latency",
    "layer_latency_markdown",
    "layer_table",
    "layer_table_markdown",
    "measure_latency",
    "plot_budget_control",
    "plot_layer_sparsity",
    "plot_singular_values",
    "plot_weight_pattern",
    "rank_at_energy",
    "render_markdown",
    "singular_values",
    "size_section",
    "timing_stats",
    "wall_timer",
    "write_report",
]
