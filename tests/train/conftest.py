"""Fixtures of the training tests (helpers live in helpers.py)."""

from __future__ import annotations

import pytest

from shrinkage.data import ImageDataset

from .helpers import tiny_data


@pytest.fixture
def datasets() -> tuple[ImageDataset, ImageDataset]:
    return tiny_data(96, seed=1), tiny_data(60, seed=2)
