"""Latency measurement: only sanity of the numbers, never wall-clock claims."""

import math

import pytest
import torch
from torch import nn

from shrinkage.errors import ConfigError
from shrinkage.metrics import compare_latency, measure_latency


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
