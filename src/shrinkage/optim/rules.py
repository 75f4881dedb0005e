"""Typed rules that bind a penalty to layers: by module type, name pattern or predicate.

A config never lists parameter names; it says "every Conv2d", "modules matching
``layer*.conv1``" or "any module for which this function is true".
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from shrinkage.errors import ConfigError
from shrinkage.groups.kinds import GroupKind
from shrinkage.penalties.base import Penalty


class Selector(ABC):
    """Chooses modules by qualified name and module object."""

    @abstractmethod
    def matches(self, name: str, module: nn.Module) -> bool: ...


@dataclass(frozen=True)
class ModuleType(Selector):
    """Modules that are instances of any of ``types`` (subclasses included)."""

    types: tuple[type[nn.Module], ...]

    def __post_init__(self) -> None:
        if not self.types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in self.types):
            raise ConfigError(f"ModuleType.types must be nn.Module subclasses, got {self.types!r}")

    def matches(self, name: str, module: nn.Module) -> bool:
        return isinstance(module, self.types)

    def __str__(self) -> str:
        return "type in (" + ", ".join(t.__name__ for t in self.types) + ")"


@dataclass(frozen=True)
class NamePattern(Selector):
    """Modules whose qualified name matches a shell-style glob (``fnmatch``), e.g. ``layer*.conv?``."""

    pattern: str

    def matches(self, name: str, module: nn.Module) -> bool:
        return bool(name) and fnmatch.fnmatchcase(name, self.pattern)

    def __str__(self) -> str:
        return f"name ~ {self.pattern!r}"


@dataclass(frozen=True)
class Predicate(Selector):
    """Modules for which ``fn(name, module)`` is true (for use from Python)."""

    fn: Callable[[str, nn.Module], bool]

    def matches(self, name: str, module: nn.Module) -> bool:
        return bool(self.fn(name, module))

    def __str__(self) -> str:
        return f"predicate {getattr(self.fn, '__name__', repr(self.fn))}"


@dataclass(frozen=True)
class AllOf(Selector):
    """Modules matched by every selector in ``parts``."""

    parts: tuple[Selector, ...]

    def matches(self, name: str, module: nn.Module) -> bool:
        return all(p.matches(name, module) for p in self.parts)

    def __str__(self) -> str:
        return " and ".join(str(p) for p in self.parts)


@dataclass(frozen=True)
class Rule:
    """Apply ``penalty`` to the ``groups`` of every module chosen by ``select``.

    ``exclude`` removes modules again (typically the classifier, whose outputs are the
    classes). ``every`` applies the proximal map every k optimizer steps with a k-times
    larger threshold: an approximation that amortizes expensive maps such as the SVD of
    the nuclear norm.
    """

    select: Selector
    groups: GroupKind
    penalty: Penalty
    exclude: Selector | None = None
    every: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ConfigError(f"rule.every must be an integer >= 1, got {self.every!r}")

    def chosen(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return [
            (name, module)
            for name, module in model.named_modules()
            if self.select.matches(name, module) and not (self.exclude and self.exclude.matches(name, module))
        ]
