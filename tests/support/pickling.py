"""Loading must never unpickle: a test helper that makes any attempt fail loudly."""

from __future__ import annotations

import pickle

import pytest


def refuse_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``pickle`` entry point raises while ``monkeypatch`` is active."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
