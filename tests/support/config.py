"""Config-test helper shared by the loader, target and trustworthy-run tests."""

from __future__ import annotations

import pytest

from shrinkage.config import parse_config
from shrinkage.errors import ConfigError


def config_error(text: str, overrides: tuple[str, ...] = ()) -> str:
    """The one-line message ``parse_config`` raises for ``text`` (fails if it raises none)."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "run.yaml", overrides)
    message = str(info.value)
    assert "\n" not in message
    return message
