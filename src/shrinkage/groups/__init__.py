"""Groupings: how a tensor (or coupled slices of several) is seen as groups."""

from shrinkage.groups.base import AxisGrouping, ColumnGrouping, FlatGrouping, Grouping, SliceGrouping
from shrinkage.groups.coupled import CoupledChannels
from shrinkage.groups.kinds import Channels, Depth, Filters, GroupKind, Heads, Matrix, Shapes

__all__ = [
    "AxisGrouping",
    "Channels",
    "ColumnGrouping",
    "CoupledChannels",
    "Depth",
    "Filters",
    "FlatGrouping",
    "GroupKind",
    "Grouping",
    "Heads",
    "Matrix",
    "Shapes",
    "SliceGrouping",
]
