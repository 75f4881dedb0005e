"""choose_step: the change of log-strength aimed at a forecast outcome."""

from __future__ import annotations

import pytest

from shrinkage.optim.forecast import choose_step

LIMIT = 4.0


def _levels(*edges: float, start: float = 1.0, drop: float = 0.116):
    """A forecast that falls by one coarse group (``drop``) at each edge of x."""

    def forecast(x: float) -> float:
        return start - drop * sum(x >= e for e in edges)

    return forecast


def test_a_budget_is_an_upper_bound_even_when_the_level_below_is_far() -> None:
    forecast = _levels(1.0, 2.0)  # 1.0 below x=1, then 0.884, then 0.768
    x = choose_step(forecast, 0.9775, LIMIT)
    assert x == pytest.approx(1.0, abs=1e-9) and forecast(x) == pytest.approx(0.884)


def test_on_the_ramp_the_nearest_outcome_is_aimed_at_and_no_change_made_for_it() -> None:
    forecast = _levels(1.0, 2.0)
    assert choose_step(forecast, 0.9775, LIMIT, nearest=True) == 0.0  # 1.0 is nearer than 0.884
    assert choose_step(forecast, 0.95, LIMIT, nearest=True) == 0.0  # 0.05 above against 0.066 below
    x = choose_step(forecast, 0.93, LIMIT, nearest=True)  # 0.884 is nearer: the first removal is due
    assert x == pytest.approx(1.0, abs=1e-9) and forecast(x) == pytest.approx(0.884)
    tie = choose_step(_levels(1.0, start=1.0, drop=0.2), 0.9, LIMIT, nearest=True)
    assert tie == pytest.approx(1.0, abs=1e-9)  # a tie takes the lower outcome


def test_a_strength_that_already_removes_too_much_is_lowered_to_the_nearest_level() -> None:
    forecast = _levels(-1.0, 1.0)  # the current strength (x=0) forecasts 0.884
    x = choose_step(forecast, 0.99, LIMIT, nearest=True)
    assert forecast(x) == 1.0 and x == pytest.approx(-1.0, abs=1e-9)  # the smallest cut that gives 1.0
    assert choose_step(forecast, 0.99, LIMIT) == 0.0  # as a bound: 0.884 is the highest at or below


def test_a_continuous_forecast_gives_the_goal_either_way() -> None:
    def forecast(x: float) -> float:
        return 0.8 - 0.1 * x

    for nearest in (False, True):
        assert forecast(choose_step(forecast, 0.75, LIMIT, nearest=nearest)) == pytest.approx(0.75, abs=1e-9)


def test_out_of_reach_goals_take_the_limit() -> None:
    forecast = _levels(1.0)
    assert choose_step(forecast, 0.5, LIMIT, nearest=True) == LIMIT
    assert choose_step(_levels(-10.0), 0.95, LIMIT, nearest=True) == -LIMIT
