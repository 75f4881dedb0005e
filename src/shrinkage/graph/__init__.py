"""Dependency graph: tracing plus per-operation rules that yield coupled channel spaces."""

from shrinkage.graph.builder import ChannelGraph, GraphBuilder, RuleSet, build_channel_graph, channel_positions
from shrinkage.graph.rules import default_rules
from shrinkage.graph.spaces import Axis, Segment, Slice, Space, SpaceTable, Use

__all__ = [
    "Axis",
    "ChannelGraph",
    "GraphBuilder",
    "RuleSet",
    "Segment",
    "Slice",
    "Space",
    "SpaceTable",
    "Use",
    "build_channel_graph",
    "channel_positions",
    "default_rules",
]
