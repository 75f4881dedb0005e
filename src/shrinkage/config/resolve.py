"""Turn validated config names into the library's typed objects, once.

This is the only place where a group kind or module type is chosen by a config word;
everything downstream works with :class:`shrinkage.optim.Rule` objects.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from shrinkage.config.modules import MODULE_TYPES
from shrinkage.config.regularization import GroupName, RegularizationConfig, RuleConfig, SelectConfig
from shrinkage.groups import Channels, CoupledChannels, Depth, Filters, GroupKind, Heads, Matrix, Shapes
from shrinkage.optim import AllOf, ModuleType, NamePattern, Rule, Selector

GROUP_KINDS: dict[GroupName, GroupKind] = {
    GroupName.FILTERS: Filters(),
    GroupName.CHANNELS: Channels(),
    GroupName.SHAPES: Shapes(),
    GroupName.DEPTH: Depth(),
    GroupName.MATRIX: Matrix(),
    GroupName.HEADS: Heads(),
}


def group_kind(name: GroupName, input_shape: tuple[int, ...]) -> GroupKind:
    """The kind a config name stands for; coupled groups trace the model on ``input_shape``."""
    if name is GroupName.COUPLED:
        return CoupledChannels(input_shape)
    return GROUP_KINDS[name]


@dataclass(frozen=True)
class AnyName(Selector):
    """Modules whose qualified name matches any of the globs (a config's list of names)."""

    patterns: tuple[str, ...]

    def matches(self, name: str, module: nn.Module) -> bool:
        return bool(name) and any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def __str__(self) -> str:
        return "name ~ " + " or ".join(repr(p) for p in self.patterns)


def _names(patterns: tuple[str, ...]) -> Selector:
    return NamePattern(patterns[0]) if len(patterns) == 1 else AnyName(patterns)


def resolve_selector(select: SelectConfig) -> Selector:
    """Types and names of a config, both required to match when both are given."""
    parts: list[Selector] = []
    if select.types:
        parts.append(ModuleType(tuple(MODULE_TYPES[t] for t in select.types)))
    if select.names:
        parts.append(_names(select.names))
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def resolve_rule(rule: RuleConfig, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> list[Rule]:
    """One :class:`Rule` per group kind listed in ``rule.groups`` (same selection and penalty).

    ``input_shape`` (one example batch) is only used by coupled groups, to trace the model.
    """
    select = resolve_selector(rule.select)
    exclude = _names(rule.exclude) if rule.exclude else None
    penalty = rule.penalty.build()
    kinds = [group_kind(g, input_shape) for g in rule.groups]
    return [Rule(select, kind, penalty, exclude=exclude, every=rule.every) for kind in kinds]


def resolve_rules(config: RegularizationConfig, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> list[Rule]:
    """All rules of a config, in order (a config rule listing k group kinds gives k rules)."""
    return [r for rule in config.rules for r in resolve_rule(rule, input_shape)]

