"""Config of the regularization phase: which layers, which groups, which penalty.

A YAML rule reads::

    - select: {types: [Conv2d], names: ["conv*"]}   # both given: a module must match both
      exclude: [fc2]                                # globs of module names to skip
      groups: [filters, channels]                   # one term per group kind
      penalty: {kind: group_lasso, strength: 1.0e-3}
      every: 1

Names become typed values here (enums, one dataclass per penalty); turning them into
library objects is :func:`shrinkage.config.resolve.resolve_rules`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from shrinkage.config.fields import FieldError, count, in_range, non_empty, non_negative
from shrinkage.config.modules import MODULE_TYPES
from shrinkage.penalties import L1, GroupLasso, NuclearNorm, Penalty, SparseGroupLasso
from shrinkage.penalties.nuclear_norm import SvdMethod


class Mode(Enum):
    """How the penalty is optimized."""

    #: gradient step on the loss, then the penalty's exact proximal map (exact zeros)
    PROXIMAL = "proximal"
    #: loss + penalty differentiated together (SSL paper); small groups zeroed at the end
    SUBGRADIENT = "subgradient"


#: other words people use for the same SSL groups (Linear rows/columns, MLP neurons)
GROUP_ALIASES: dict[str, str] = {
    "rows": "filters",
    "neurons": "filters",
    "columns": "channels",
    "inputs": "channels",
}


class GroupName(Enum):
    """Which slices of a selected module form the groups (see ``shrinkage.groups.kinds``)."""

    FILTERS = "filters"
    CHANNELS = "channels"
    SHAPES = "shapes"
    DEPTH = "depth"
    MATRIX = "matrix"
    #: a channel with everything removed with it, across layers (shrinkage.groups.coupled)
    COUPLED = "coupled"
    #: an attention head: its q/k/v rows and output columns (shrinkage.groups.kinds.Heads)
    HEADS = "heads"

    @classmethod
    def _missing_(cls, value: object) -> GroupName | None:
        # Enum calls this when GroupName("rows") finds no member: resolve aliases here so
        # the loader's generic enum conversion accepts them too.
        if not isinstance(value, str):
            return None
        word = GROUP_ALIASES.get(value.lower(), value.lower())
        return next((m for m in cls if m.value == word), None)

    @classmethod
    def accepted(cls) -> list[str]:
        """Every accepted spelling (for error messages and suggestions)."""
        return [m.value for m in cls] + list(GROUP_ALIASES)


@dataclass(frozen=True)
class L1Config:
    """Elementwise L1 (unstructured sparsity)."""

    KIND: ClassVar[str] = "l1"
    strength: float

    def __post_init__(self) -> None:
        non_negative("strength", self.strength)

    def build(self) -> Penalty:
        return L1(float(self.strength))


@dataclass(frozen=True)
class GroupLassoConfig:
    """Group Lasso (SSL): sum of unsquared group norms."""

    KIND: ClassVar[str] = "group_lasso"
    strength: float
    scale_by_size: bool = False

    def __post_init__(self) -> None:
        non_negative("strength", self.strength)

    def build(self) -> Penalty:
        return GroupLasso(float(self.strength), scale_by_size=self.scale_by_size)


@dataclass(frozen=True)
class SparseGroupLassoConfig:
    """Sparse group Lasso (Alvarez & Salzmann): ``alpha`` weighs L1 against group norms."""

    KIND: ClassVar[str] = "sparse_group_lasso"
    strength: float
    alpha: float = 0.5

    def __post_init__(self) -> None:
        non_negative("strength", self.strength)
        in_range("alpha", self.alpha, 0.0, 1.0, low_open=False, high_open=False)

    def build(self) -> Penalty:
        return SparseGroupLasso(float(self.strength), alpha=float(self.alpha))


@dataclass(frozen=True)
class NuclearNormConfig:
    """Nuclear norm (sum of singular values) of the weight matrix: low rank."""

    KIND: ClassVar[str] = "nuclear_norm"
    strength: float
    #: ``randomized``: a sketch of the previous rank + ``oversampling`` with a full-SVD fallback
    method: SvdMethod = SvdMethod.FULL
    oversampling: int = 10

    def __post_init__(self) -> None:
        non_negative("strength", self.strength)
        count("oversampling", self.oversampling, minimum=1)

    def build(self) -> Penalty:
        return NuclearNorm(float(self.strength), method=self.method, oversampling=self.oversampling)


PenaltyConfig = L1Config | GroupLassoConfig | SparseGroupLassoConfig | NuclearNormConfig


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"


@dataclass(frozen=True)
class SelectConfig:
    """Modules chosen by type (any of ``types``) and/or qualified-name glob (any of ``names``)."""

    types: tuple[str, ...] = ()
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.types and not self.names:
            raise FieldError("types", "a rule must select by 'types', 'names' or both")
        for name in self.types:
            if name not in MODULE_TYPES:
                raise FieldError("types", f"unknown module type '{name}'" + _suggest(name, list(MODULE_TYPES)))
        for pattern in self.names:
            non_empty("names", pattern)

    def __str__(self) -> str:
        parts = ([f"types {list(self.types)}"] if self.types else []) + (
            [f"names {list(self.names)}"] if self.names else []
        )
        return " and ".join(parts)


@dataclass(frozen=True)
class RuleConfig:
    """One regularization rule: ``penalty`` on the ``groups`` of the selected modules."""

    select: SelectConfig
    groups: tuple[GroupName, ...]
    penalty: PenaltyConfig
    exclude: tuple[str, ...] = ()
    every: int = 1

    def __post_init__(self) -> None:
        if not self.groups:
            raise FieldError("groups", f"at least one group kind is required ({', '.join(GroupName.accepted())})")
        if len(set(self.groups)) != len(self.groups):
            raise FieldError("groups", f"a group kind is listed twice: {[g.value for g in self.groups]}")
        count("every", self.every, minimum=1)
        for pattern in self.exclude:
            non_empty("exclude", pattern)


@dataclass(frozen=True)
class RegularizationConfig:
    """Rules and how they are optimized; no rules means plain (baseline) training."""

    mode: Mode = Mode.PROXIMAL
    rules: tuple[RuleConfig, ...] = ()
    #: subgradient mode only: groups whose L2 norm ends below this are set to zero
    zero_threshold: float = 1e-3
    #: proximal mode: the threshold uses max(lr, min_lr_fraction * initial lr), so a schedule
    #: decaying to zero does not switch the penalty off while momentum still moves weights
    min_lr_fraction: float = 0.0
    #: proximal mode: at the end of training, remove what the last threshold would remove
    truncate_at_end: bool = False

    def __post_init__(self) -> None:
        non_negative("zero_threshold", self.zero_threshold)
        in_range("min_lr_fraction", self.min_lr_fraction, 0.0, 1.0, low_open=False, high_open=False)
        if not isinstance(self.truncate_at_end, bool):
            raise FieldError("truncate_at_end", f"must be true or false, got {self.truncate_at_end!r}")
