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
from shrinkage.groups import Channels, Depth, Filters, GroupKind, Matrix, Shapes
from shrinkage.optim import AllOf, ModuleType, NamePattern, Rule, Selector

GROUP_KINDS: dict[GroupName, GroupKind] = {
    GroupName.FILTERS: Filters(),
    GroupName.CHANNELS: Channels(),
    GroupName.SHAPES: Shapes(),
    GroupName.DEPTH: Depth(),
    GroupName.MATRIX: Matrix(),
}


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


def resolve_rule(rule: RuleConfig) -> list[Rule]:
    """One :class:`Rule` per group kind listed in ``rule.groups`` (same selection and penalty)."""
    select = resolve_selector(rule.select)
    exclude = _names(rule.exclude) if rule.exclude else None
    penalty = rule.penalty.build()
    return [Rule(select, GROUP_KINDS[g], penalty, exclude=exclude, every=rule.every) for g in rule.groups]


def resolve_rules(config: RegularizationConfig) -> list[Rule]:
    """All rules of a config, in order (a config rule listing k group kinds gives k rules)."""
    return [r for rule in config.rules for r in resolve_rule(rule)]

