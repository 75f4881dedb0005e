"""benchmarks/budget_report.py says which recorded nuclear-norm rows ran with the
controller reading between prox steps (a warm-up that is not a multiple of 5 steps)."""

from __future__ import annotations

from support.benchmark_modules import load_benchmark


def test_only_runs_before_the_fix_with_a_warmup_off_the_prox_grid_are_marked() -> None:
    b = load_benchmark("budget_report")
    before, after = "2026-11-30T18:00:00+00:00", "2026-12-02T00:00:00+00:00"
    # 60,000 images at batch 64: 938 steps an epoch; a tenth of 2 epochs is 188 steps, of 8 epochs 750
    assert b.misaligned_warmup({"epochs": 2, "dates": [before]}) == 188
    assert b.misaligned_warmup({"epochs": 8, "dates": [before]}) is None
    assert b.misaligned_warmup({"epochs": 2, "dates": [after]}) is None
    assert b.misaligned_warmup({"epochs": 1, "limit_train": 7040, "dates": [before]}) == 11  # 110 steps
    assert b.misaligned_warmup({"epochs": 1, "limit_train": 6400, "dates": [before]}) is None  # 100 steps
