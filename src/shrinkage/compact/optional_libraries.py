"""Registrations for optional libraries (timm, transformers), run once they are imported.

A layer or attention type of an optional library is registered only after the user's
code has imported that library (a model of theirs can only exist then), so importing
shrinkage stays light. Registries queue their registration with :func:`when_imported`
and call :func:`register_imported` before every lookup.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

_PENDING: dict[str, list[Callable[[], None]]] = {}


def when_imported(library: str, register: Callable[[], None]) -> None:
    """Run ``register`` at the first lookup after ``library`` is imported (at once if it is)."""
    _PENDING.setdefault(library, []).append(register)


def register_imported() -> None:
    """Run the registrations of every queued library that has been imported since."""
    for library in [name for name in _PENDING if name in sys.modules]:
        for register in _PENDING.pop(library):  # popped first: a registration may look types up
            register()
