"""Latency measurement: sanity of real numbers (never wall-clock claims), and statistics,
control and rendering exactly, with an injected timer."""

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from shrinkage.errors import ConfigError, ShrinkageError
from shrinkage.metrics import (
    compare_latency,
    latency_section,
    measure_latency,
    render_markdown,
    timing_stats,
    wall_timer,
    write_report,
)
from shrinkage.metrics.timing import MIN_ROUNDS


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.5), nn.Linear(32, 4))


def test_measure_latency_positive_and_restores_mode() -> None:
    model = _model().train()
    result = measure_latency(model, torch.randn(2, 16), min_run_time=0.02, threads=1)
    assert result.median_ms > 0
    assert result.iqr_ms >= 0
    assert result.measurements >= 1
    assert result.threads == 1
    assert model.training


def test_measure_latency_default_threads() -> None:
    result = measure_latency(_model(), torch.randn(1, 16), min_run_time=0.01)
    assert result.threads == torch.get_num_threads()


def test_compare_latency_self_speedup_is_finite() -> None:
    model = _model()
    rows = compare_latency(
        {"dense": model, "same": model},
        lambda batch: torch.randn(batch, 16),
        batch_sizes=(1, 8),
        repeats=2,
        min_run_time=0.01,
    )
    assert [row.batch_size for row in rows] == [1, 8]
    for row in rows:
        assert row.reference == "dense"
        assert row.speedup["dense"] == 1.0
        assert math.isfinite(row.speedup["same"]) and row.speedup["same"] > 0
        assert all(ms > 0 for ms in row.median_ms.values())


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_sizes": (0,)}, {"repeats": 0}, {"min_run_time": 0.0}, {"threads": 0}],
)
def test_compare_latency_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        compare_latency({"m": _model()}, lambda b: torch.randn(b, 16), **kwargs)


def test_compare_latency_rejects_empty_models() -> None:
    with pytest.raises(ConfigError, match="empty"):
        compare_latency({}, lambda b: torch.randn(b, 16))


# --- statistics, control and rendering, with an injected timer (no wall-clock claims) -----

COPY = "dense (identical copy)"


def fixed_timer(per_call_s: dict[str, float], log: list[tuple[str, int]] | None = None) -> Callable:
    """A fake timer: each label costs a fixed number of seconds per call; nothing is run."""

    def timer(label: str, run: Callable[[], object], calls: int) -> float:
        if log is not None:
            log.append((label, calls))
        return calls * per_call_s[label]

    return timer


def _compare(timer: Callable, **kwargs) -> list:
    settings = {"batch_sizes": (1,), "rounds": 20, "calls_per_round": 3, "timer": timer, **kwargs}
    return compare_latency({"dense": _model(), "compact": _model()}, lambda b: torch.randn(b, 16), **settings)


def test_timing_stats_median_min_quartiles_and_spread() -> None:
    stats = timing_stats([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0], calls_per_round=4)
    assert (stats.median_ms, stats.min_ms, stats.iqr_ms) == (5.0, 1.0, 4.0)  # quartiles 3 and 7
    assert stats.spread == pytest.approx(0.8)
    assert (stats.rounds, stats.calls_per_round) == (9, 4)
    two = timing_stats([1.0, 3.0])
    assert (two.median_ms, two.iqr_ms) == (2.0, 1.0)  # quartiles 1.5 and 2.5, interpolated
    one = timing_stats([2.0])
    assert (one.median_ms, one.min_ms, one.iqr_ms, one.spread) == (2.0, 2.0, 0.0, 0.0)
    with pytest.raises(ShrinkageError, match="no samples"):
        timing_stats([])


def test_control_copy_ten_percent_slower_is_flagged_unreliable() -> None:
    (row,) = _compare(fixed_timer({"dense": 2e-3, "compact": 1e-3, COPY: 2.2e-3}))
    assert row.median_ms == {"dense": pytest.approx(2.0), "compact": pytest.approx(1.0)}
    assert row.speedup == {"dense": 1.0, "compact": pytest.approx(2.0)}
    assert row.control_ratio == pytest.approx(2.0 / 2.2)
    assert row.reliable is False
    assert "0.909x" in row.reason and "9.1% off 1.0" in row.reason and "limit 5%" in row.reason
    assert "\n" not in row.reason
    assert row.control.median_ms == pytest.approx(2.2)
    assert row.stats["dense"].rounds == 20 and row.stats["dense"].calls_per_round == 3
    assert row.cpu_count is None or row.cpu_count >= 1


def test_control_within_tolerance_is_reliable() -> None:
    (row,) = _compare(fixed_timer({"dense": 2e-3, "compact": 1e-3, COPY: 2.04e-3}))
    assert row.reliable is True and "within 5%" in row.reason
    # the threshold is a parameter: the same 10% deviation passes a 20% tolerance
    (loose,) = _compare(fixed_timer({"dense": 2e-3, "compact": 1e-3, COPY: 2.2e-3}), control_tolerance=0.2)
    assert loose.reliable is True and loose.tolerance == 0.2


def test_control_off_leaves_reliability_unknown() -> None:
    (row,) = _compare(fixed_timer({"dense": 2e-3, "compact": 1e-3}), control=False)
    assert (row.control, row.control_ratio, row.reliable, row.reason) == (None, None, None, "")


def test_statistics_come_from_per_round_samples() -> None:
    """Each round's sample is its block's time divided by its calls; median/min/IQR over rounds."""
    per_round = {"dense": iter([5, 1, 9, 3, 7, 2, 8, 4, 6]), "compact": iter([2] * 9), COPY: iter([5] * 9)}

    def timer(label: str, run: Callable[[], object], calls: int) -> float:
        if calls == 1:  # calibration: single calls before the rounds
            return 1e-3
        return calls * next(per_round[label]) * 1e-3

    (row,) = _compare(timer, rounds=9, calls_per_round=2)
    dense = row.stats["dense"]
    assert (dense.median_ms, dense.min_ms, dense.iqr_ms, dense.spread) == pytest.approx((5.0, 1.0, 4.0, 0.8))
    assert row.speedup["compact"] == pytest.approx(2.5)
    assert row.control_ratio == pytest.approx(1.0) and row.reliable is True


def test_rounds_shuffle_the_order_and_stop_at_the_budget() -> None:
    log: list[tuple[str, int]] = []
    (row,) = _compare(fixed_timer({"dense": 1e-3, "compact": 1e-3, COPY: 1e-3}, log),
                      rounds=None, calls_per_round=None, repeats=1, min_run_time=0.1)
    timed = [label for label, calls in log if calls > 1]  # the rounds, not the single calibration calls
    firsts = {timed[i] for i in range(0, len(timed), 3)}
    assert firsts == {"dense", "compact", COPY}  # no model always runs first
    # 1 ms calls -> blocks of 2 calls; 3 models x 2 ms per round; 0.3 s in all -> 50 rounds
    assert row.stats["dense"].calls_per_round == 2
    assert row.stats["dense"].rounds == 50 >= MIN_ROUNDS


def test_control_times_a_separate_copy_and_leaves_the_model_alone() -> None:
    model = _model().train()
    seen: dict[str, set[int]] = {}
    current = [""]
    # hook functions are shared, not copied, by deepcopy: the copy reports itself here too
    model.register_forward_pre_hook(lambda module, args: seen.setdefault(current[0], set()).add(id(module)))

    def timer(label: str, run: Callable[[], object], calls: int) -> float:
        current[0] = label
        run()
        current[0] = ""  # untimed warm-up calls land under ""
        return calls * 1e-3

    compare_latency({"dense": model}, lambda b: torch.randn(b, 16), batch_sizes=(2,), rounds=2,
                    calls_per_round=1, timer=timer)
    assert seen["dense"] == {id(model)} and len(seen[COPY]) == 1 and seen[COPY] != seen["dense"]
    assert model.training


def test_measure_latency_with_injected_timer() -> None:
    result = measure_latency(_model(), torch.randn(1, 16), timer=fixed_timer({"model": 4e-3}))
    assert (result.median_ms, result.min_ms, result.iqr_ms, result.spread) == pytest.approx((4.0, 4.0, 0.0, 0.0))
    assert result.measurements >= MIN_ROUNDS


class _Uncopyable(nn.Linear):
    def __deepcopy__(self, memo: dict) -> None:
        raise TypeError("holds a handle")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"control_tolerance": 0.0}, "control_tolerance must be a number > 0, got 0.0"),
        ({"control_tolerance": float("nan")}, "control_tolerance must be a number > 0"),
        ({"rounds": 0}, "rounds must be a positive integer, got 0"),
        ({"calls_per_round": -1}, "calls_per_round must be a positive integer, got -1"),
        ({"threads": True}, "threads must be a positive integer, got True"),
        ({"batch_sizes": "12"}, "batch_sizes must be a sequence of integers"),
        ({"repeats": 1.5}, "repeats must be a positive integer, got 1.5"),
    ],
)
def test_compare_latency_bad_arguments_give_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compare_latency({"m": _model()}, lambda b: torch.randn(b, 16), **kwargs)
    assert str(info.value).startswith("compare_latency: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_compare_latency_bad_timer_input_and_copy_give_one_line() -> None:
    with pytest.raises(ShrinkageError, match=r"^latency: the timer returned nan for 'm'; expected seconds >= 0$"):
        compare_latency({"m": _model()}, lambda b: torch.randn(b, 16), timer=lambda label, run, calls: math.nan)
    with pytest.raises(ConfigError, match=r"make_input\(1\) returned list, not a Tensor"):
        compare_latency({"m": _model()}, lambda b: [torch.randn(b, 16)], batch_sizes=(1,))
    with pytest.raises(ShrinkageError, match=r"cannot copy the reference model 'm' for the control \(TypeError: "
                                             r"holds a handle\); pass control=False$"):
        compare_latency({"m": _Uncopyable(16, 4)}, lambda b: torch.randn(b, 16))
    uncopyable = _Uncopyable(16, 4)
    with pytest.raises(TypeError):
        copy.deepcopy(uncopyable)
    (row,) = compare_latency({"m": uncopyable}, lambda b: torch.randn(b, 16), batch_sizes=(1,), control=False,
                             timer=fixed_timer({"m": 1e-3}), rounds=3)
    assert row.median_ms == {"m": pytest.approx(1.0)}


def _unreliable_report() -> dict:
    rows = _compare(fixed_timer({"dense": 2e-3, "compact": 1e-3, COPY: 2.2e-3}), batch_sizes=(1, 8))
    return {"size": {"mac_ratio": 3.0}, "latency": latency_section(rows, "compact")}


def test_latency_section_carries_statistics_and_the_flag() -> None:
    section = _unreliable_report()["latency"]
    assert [r["batch_size"] for r in section] == [1, 8]
    row = section[0]
    assert row["dense_ms"] == pytest.approx(2.0) and row["compact_ms"] == pytest.approx(1.0)
    assert row["speedup"] == pytest.approx(2.0)
    assert row["dense_min_ms"] == pytest.approx(2.0) and row["compact_spread"] == 0.0
    assert (row["rounds"], row["calls_per_round"]) == (20, 3)
    assert row["reliable"] is False and row["control_ratio"] == pytest.approx(1 / 1.1)
    assert row["reason"].startswith("the reference timed against an identical copy came out 0.909x")


def test_unreliable_flag_shows_next_to_the_speedups_in_markdown_and_json(tmp_path: Path) -> None:
    report = _unreliable_report()
    text = render_markdown(report)
    summary = text.split("## Summary")[1].split("##")[0]
    assert "2.00× (unreliable)" in summary
    latency = text.split("## Latency")[1]
    header, _, first = latency.strip().splitlines()[:3]
    cells = [c.strip() for c in first.strip("|").split("|")]
    names = [c.strip() for c in header.strip("|").split("|")]
    assert cells[names.index("speedup")] == "2.00× (unreliable)"
    assert cells[names.index("control")] == "0.91×" and cells[names.index("reliable")] == "**no**"
    assert cells[names.index("MAC ratio")] == "3.00×"
    assert "**Batch 1 is unreliable:** the reference timed against an identical copy came out 0.909x" in latency
    write_report(tmp_path, report)
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert [r["reliable"] for r in loaded["latency"]] == [False, False]
    assert loaded["latency"][0]["reason"] == report["latency"][0]["reason"]
    assert render_markdown(loaded) == text


def test_reliable_rows_render_without_a_mark() -> None:
    rows = _compare(fixed_timer({"dense": 2e-3, "compact": 1e-3, COPY: 2e-3}))
    text = render_markdown({"latency": latency_section(rows)})
    assert "(unreliable)" not in text and "| yes |" in text and "1.00×" in text


def test_wall_timer_synchronizes_cuda_around_the_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(f"sync {device}"))
    seconds = wall_timer(torch.device("cuda:0"))("m", lambda: events.append("call"), 3)
    assert events == ["sync cuda:0", "call", "call", "call", "sync cuda:0"]
    assert seconds >= 0
    events.clear()
    wall_timer("cpu")("m", lambda: events.append("call"), 2)
    assert events == ["call", "call"]  # nothing to wait for on the CPU


def test_very_slow_calls_stop_at_a_hard_bound() -> None:
    """Ten rounds of 0.1 s calls would be 3 s against a 0.03 s budget: three rounds, then stop."""
    (row,) = _compare(fixed_timer({"dense": 0.1, "compact": 0.1, COPY: 0.1}), rounds=None, calls_per_round=None,
                      repeats=1, min_run_time=0.01)
    assert row.stats["dense"].rounds == 3 and row.stats["dense"].calls_per_round == 1


def test_compare_latency_logs_the_rounds_it_ran_when_the_time_budget_decides(caplog: pytest.LogCaptureFixture) -> None:
    """Without fixed ``rounds`` the log line states how many rounds ran (it once formatted None)."""
    import logging

    with caplog.at_level(logging.INFO, logger="shrinkage.metrics.latency"):
        (row,) = compare_latency(
            {"a": nn.Linear(2, 2)}, lambda n: torch.zeros(n, 2), (1,), repeats=1, min_run_time=0.01
        )
    # the result line only: on a loaded machine an "is unreliable" warning comes before it
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and r.msg.startswith("latency batch=")]
    assert lines == [lines[0]] and f"({row.stats['a'].rounds} rounds x " in lines[0]


def test_thread_environment_records_what_changes_thread_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    from shrinkage.metrics.timing import THREAD_ENVIRONMENT, thread_environment

    for key in THREAD_ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("UNRELATED_SETTING", "1")
    assert thread_environment() == {"OMP_WAIT_POLICY": "PASSIVE"}
