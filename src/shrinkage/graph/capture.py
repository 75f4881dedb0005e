"""Which capture builds a model's channel graph: ``torch.export`` or ``torch.fx``.

``torch.export`` (ATen ops, :mod:`shrinkage.graph.export_graph`) covers the models that
symbolic tracing cannot follow (Hugging Face transformers, most of timm) and resolves
in-place ops; ``torch.fx`` (:mod:`shrinkage.graph.builder`) keeps module boundaries, so
modules with a rule of their own (``nn.MultiheadAttention``, whose heads are removed as
units, and any ``leaf_modules`` a user declares) are seen whole. ``Capture.AUTO`` picks
fx for those models and export for the others, and falls back to the other capture when
the first one cannot capture the model or has no rule for one of its ops; the graph
records which capture was used.
"""

from __future__ import annotations

import enum
from typing import Any

from torch import nn

from shrinkage.errors import ExampleInputError, UnsupportedModuleError
from shrinkage.graph.builder import ChannelGraph, build_channel_graph
from shrinkage.graph.export_graph import ExportChannelGraph, build_export_graph
from shrinkage.graph.rules import default_rules
from shrinkage.layers import HeadPrunedAttention


class Capture(enum.Enum):
    """How :func:`capture_channel_graph` captures a model."""

    AUTO = "auto"
    EXPORT = "torch.export"
    FX = "torch.fx"


#: module types whose rule needs the module whole (fx sees them as one node)
MODULE_LEVEL_TYPES: tuple[type[nn.Module], ...] = (nn.MultiheadAttention, HeadPrunedAttention)


def capture_used(graph: ChannelGraph) -> Capture:
    return Capture.EXPORT if isinstance(graph, ExportChannelGraph) else Capture.FX


def capture_channel_graph(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    capture: Capture = Capture.AUTO,
    *,
    leaf_modules: tuple[type[nn.Module], ...] = (),
    allow_unknown: bool = False,
) -> ChannelGraph:
    """The channel graph of ``model`` on ``example_inputs`` (the model is left unchanged)."""
    from shrinkage.graph.aten_rules import default_aten_rules  # imports this package's rules

    def by_export() -> ChannelGraph:
        return build_export_graph(model, example_inputs, default_aten_rules(), allow_unknown=allow_unknown)

    def by_fx() -> ChannelGraph:
        return build_channel_graph(
            model, example_inputs, default_rules(), leaf_modules=leaf_modules, allow_unknown=allow_unknown
        )

    if capture is Capture.EXPORT:
        return by_export()
    if capture is Capture.FX:
        return by_fx()
    whole = leaf_modules + MODULE_LEVEL_TYPES
    order = (by_fx, by_export) if any(isinstance(m, whole) for m in model.modules()) else (by_export, by_fx)
    try:
        return order[0]()
    except ExampleInputError:
        raise  # the inputs are wrong for either capture
    except UnsupportedModuleError as first:
        try:
            return order[1]()
        except ExampleInputError:
            raise
        except UnsupportedModuleError as second:
            raise UnsupportedModuleError(f"{first} (and with the other capture: {second})") from second
