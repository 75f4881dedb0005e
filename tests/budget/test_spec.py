"""Budget: fractions in (0, 1], a positive latency, at least one target; achieved vs target."""

from __future__ import annotations

import math

import pytest

from shrinkage import Achieved, Budget
from shrinkage.errors import ConfigError


@pytest.mark.parametrize("key", ["macs", "params"])
@pytest.mark.parametrize("value", [0.0, -0.1, 1.01, math.nan, True, "0.5"])
def test_fractions_outside_unit_interval_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^budget {key} must be a fraction in \(0, 1\] of the dense model's, got ") as info:
        Budget(**{key: value})  # type: ignore[arg-type]
    assert str(info.value).endswith(repr(value))


@pytest.mark.parametrize("kwargs", [{}, {"batch_size": 4}])
def test_a_budget_needs_a_target(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="at least one of macs, params, latency_ms"):
        Budget(**kwargs)


@pytest.mark.parametrize("kwargs", [{"latency_ms": 0.0}, {"latency_ms": math.inf}, {"macs": 0.5, "batch_size": 0}])
def test_latency_and_batch_size_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="budget (latency_ms|batch_size)"):
        Budget(**kwargs)  # type: ignore[arg-type]


def test_every_given_target_must_hold() -> None:
    budget = Budget(macs=0.5, params=0.25)
    assert Achieved(0.5, 0.25).meets(budget)
    assert not Achieved(0.4, 0.26).meets(budget)
    assert not Achieved(0.51, 0.1).meets(budget)
    rows = Achieved(0.4, 0.26).side_by_side(budget)
    assert rows == {"macs": {"target": 0.5, "achieved": 0.4, "met": True},
                    "params": {"target": 0.25, "achieved": 0.26, "met": False}}  # fmt: skip
    assert not Achieved(0.1, 0.1, None).meets(Budget(latency_ms=2.0))
    assert str(Budget(macs=0.25, latency_ms=2.0, batch_size=8)) == "Budget(macs=0.25, latency_ms=2, batch_size=8)"
