"""benchmarks/budget_results.py ``--rerun``: redo some trainings of a recorded result, keep
the other rows, date every row; budget_report.py marks only rows recorded before a change."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from support.benchmark_modules import load_benchmark

OLD, NEW = "2026-11-30T18:00:00+00:00", "2026-12-02T00:00:00+00:00"


def _row(method: str, budget: float | None, accuracy: float, seed: int = 0, **extra: object) -> dict[str, object]:
    return {"method": method, "budget_macs": budget, "seed": seed, "epochs": 1, "finetune_epochs": 1,
            "accuracy_selected": accuracy, "accuracy": accuracy, "macs": budget or 1.0, "params": 0.5,
            "conv_macs": 0.5, "train_s": 1.0, "finetune_s": 1.0, **extra}  # fmt: skip


def _file(rows: list[dict[str, object]], date: str = OLD, seed: int = 0) -> dict[str, object]:
    return {"dataset": "mnist", "model": "lenet", "seed": seed, "command": f"first run {seed}", "date": date,
            "machine": {"gpu": None}, "torch": "x", "device": "cpu", "epochs": 1, "finetune_epochs": 1,
            "limit_train": None, "complete": True, "rows": rows}  # fmt: skip


def test_merge_replaces_rows_in_place_and_keeps_the_others() -> None:
    b = load_benchmark("budget_results")
    recorded = [_row("baseline", None, 0.99), _row("ssl", 0.1, 0.90), _row("plain+svd", 0.1, 0.95),
                _row("ssl", 0.05, 0.8)]
    merged = b.merge_rows(recorded, [_row("ssl", 0.1, 0.97), _row("ssl", 0.02, 0.7)])
    assert [(r["method"], r["budget_macs"], r["accuracy"]) for r in merged] == [
        ("baseline", None, 0.99), ("ssl", 0.1, 0.97), ("plain+svd", 0.1, 0.95), ("ssl", 0.05, 0.8), ("ssl", 0.02, 0.7)]


def _args(tmp_path: Path, **changes: object) -> argparse.Namespace:
    values = {"epochs": 1, "finetune_epochs": 1, "device": "cpu", "limit_train": 128, "rerun": ["ssl"],
              "runs_dir": tmp_path / "runs", "out": tmp_path, "rank_criterion": "log_kept"}  # fmt: skip
    return argparse.Namespace(**{**values, **changes})


def test_rerun_refuses_a_missing_incomplete_or_differently_recorded_result(tmp_path: Path) -> None:
    b = load_benchmark("budget_results")
    path = tmp_path / "mnist-lenet-seed0.json"
    with pytest.raises(SystemExit, match="mnist-lenet-seed0.json does not exist"):
        b._one("mnist:lenet:0", _args(tmp_path))
    path.write_text(json.dumps({**_file([]), "limit_train": 128, "epochs": 8}))
    with pytest.raises(SystemExit, match="recorded with epochs=8, this run has 1"):
        b._one("mnist:lenet:0", _args(tmp_path))
    path.write_text(json.dumps({**_file([]), "limit_train": 128, "complete": False}))
    with pytest.raises(SystemExit, match="is incomplete"):
        b._one("mnist:lenet:0", _args(tmp_path))


def test_rerun_redoes_only_the_named_training_and_dates_its_rows(tmp_path: Path) -> None:
    b = load_benchmark("budget_results")
    path = tmp_path / "mnist-lenet-seed0.json"
    kept = [_row("baseline", None, 0.99), _row("plain+svd", 0.1, 0.95), _row("nuclear", 0.05, 0.93)]
    old_ssl = [_row("ssl", 0.1, 0.123), _row("ssl", 0.05, 0.321)]
    path.write_text(json.dumps({**_file([*kept, *old_ssl]), "limit_train": 128}))
    b._one("mnist:lenet:0", _args(tmp_path))  # 128 training images, one epoch: seconds
    result = json.loads(path.read_text())
    assert result["rows"][:3] == kept and result["command"] == "first run 0" and result["date"] == OLD
    ssl = result["rows"][3:]
    assert [(r["method"], r["budget_macs"]) for r in ssl] == [("ssl", 0.1), ("ssl", 0.05)]
    assert all(r["accuracy"] not in (0.123, 0.321) and r["date"] > OLD for r in ssl)
    assert [r["trainings"] for r in result["reruns"]] == [["ssl"]]
    assert result["reruns"][0]["command"].endswith("--limit-train 128 --rerun ssl")


def test_an_ssl_focus_rerun_adds_its_rows_after_the_recorded_ones(tmp_path: Path) -> None:
    b = load_benchmark("budget_results")
    path = tmp_path / "mnist-lenet-seed0.json"
    kept = [_row("baseline", None, 0.99), _row("ssl", 0.1, 0.9), _row("ssl", 0.05, 0.8)]
    path.write_text(json.dumps({**_file(kept), "limit_train": 128}))
    b._one("mnist:lenet:0", _args(tmp_path, rerun=["ssl-focus"]))
    result = json.loads(path.read_text())
    assert result["rows"][:3] == kept
    focus = result["rows"][3:]
    assert [(r["method"], r["budget_macs"]) for r in focus] == [("ssl+focus", 0.1), ("ssl+focus", 0.05)]
    assert all(r["macs"] <= r["budget_macs"] * 1.0001 for r in focus)
    log = (tmp_path / "runs" / "mnist-lenet-0" / "ssl-focus-0.1" / "metrics.csv").read_text()
    assert "penalized_groups" in log.splitlines()[0]  # the run trained with focus
    r = load_benchmark("budget_report")
    assert "SSL, group Lasso on the weakest groups only (focus)" in r.table(r.aggregate([result]))


def test_the_ssl_mark_follows_each_rows_own_date() -> None:
    r = load_benchmark("budget_report")
    old = [_row("baseline", None, 0.99), _row("ssl", 0.1, 0.9), _row("nuclear", 0.1, 0.9)]
    marked = r.table(r.aggregate([_file(old)]))
    assert "the SSL rows (coupled group Lasso" in marked
    rerun = [_row("baseline", None, 0.99), _row("ssl", 0.1, 0.9, date=NEW), _row("nuclear", 0.1, 0.9)]
    summary = r.aggregate([_file(rerun), _file([{**row, "seed": 1} for row in old], seed=1)])
    assert "the SSL rows (coupled group Lasso" in r.table(summary)  # seed 1's SSL row is still old
    summary = r.aggregate([_file(rerun), _file([{**row, "seed": 1} for row in rerun], seed=1)])
    assert "the SSL rows (coupled group Lasso" not in r.table(summary)
    assert [row["dates"] for row in summary["mnist/lenet"]["rows"] if row["method"] == "ssl"] == [[NEW, NEW]]


def test_a_conv_mac_rerun_meets_the_budget_on_the_conv_layers(tmp_path: Path) -> None:
    b = load_benchmark("budget_results")
    path = tmp_path / "mnist-lenet-seed0.json"
    path.write_text(json.dumps({**_file([_row("baseline", None, 0.99)]), "limit_train": 128}))
    b._one("mnist:lenet:0", _args(tmp_path, rerun=["ssl-conv"]))
    conv = json.loads(path.read_text())["rows"][1:]
    assert [(r["method"], r["budget_macs"]) for r in conv] == [("ssl@conv", 0.1), ("ssl@conv", 0.05)]
    assert all(r["conv_macs"] <= r["budget_macs"] * 1.0001 for r in conv)
    saved = json.loads((tmp_path / "runs" / "mnist-lenet-0" / "ssl-conv-0.1" / "checkpoint.json").read_text())
    config = saved["config"]  # a conv budget, the conv layers penalized
    assert config["target"]["macs_of"] == ["Conv2d"]
    assert config["regularization"]["rules"][0]["select"]["names"] == ["conv1", "conv2"]
    r = load_benchmark("budget_report")
    text = r.table(r.aggregate([json.loads(path.read_text())]))
    assert "| SSL, coupled group Lasso, controller to a budget of the **conv** MACs | conv 10% |" in text
    assert "of the target), error" in text


def test_a_long_conv_mac_rerun_trains_less_recovers_more_and_meets_the_conv_budget(tmp_path: Path) -> None:
    b = load_benchmark("budget_results")
    path = tmp_path / "mnist-lenet-seed0.json"
    path.write_text(json.dumps({**_file([_row("baseline", None, 0.99)]), "limit_train": 128, "epochs": 2}))
    b._one("mnist:lenet:0", _args(tmp_path, rerun=["ssl-focus-conv-long"], epochs=2))
    rows = json.loads(path.read_text())["rows"][1:]
    assert [(r["method"], r["budget_macs"]) for r in rows] == [("ssl+focus-long@conv", b) for b in (0.1, 0.05)]
    # 40% of the baseline's 3 epochs trained (the controller's whole schedule), 2 recovering
    assert all((r["epochs"], r["finetune_epochs"]) == (1, 2) for r in rows)
    assert all(r["conv_macs"] <= r["budget_macs"] * 1.0001 for r in rows)
    run = tmp_path / "runs" / "mnist-lenet-0" / "ssl-focus-conv-long-0.1"
    saved = json.loads((run / "checkpoint.json").read_text())
    assert saved["config"]["train"]["epochs"] == 1 and saved["config"]["target"]["penalize"] == "weakest"
    r = load_benchmark("budget_report")
    text = r.table(r.aggregate([json.loads(path.read_text())]))
    label = "SSL, focus, controller to a budget of the **conv** MACs, long recovery"
    assert f"| {label} (1 + 2 epochs) | conv 10% |" in text
    assert "- SSL, focus, controller to a budget of the **conv** MACs, long recovery at 5%: conv MACs" in text


def test_a_distilled_rerun_trains_its_teacher_without_redoing_the_baseline_row(tmp_path: Path) -> None:
    b = load_benchmark("budget_results")
    path = tmp_path / "mnist-lenet-seed0.json"
    baseline = _row("baseline", None, 0.99)
    path.write_text(json.dumps({**_file([baseline]), "limit_train": 128, "epochs": 2}))
    b._one("mnist:lenet:0", _args(tmp_path, rerun=["ssl-focus-conv-long-kd"], epochs=2))
    rows = json.loads(path.read_text())["rows"]
    assert rows[0] == baseline  # the teacher was trained again, its row left as recorded
    assert [r["method"] for r in rows[1:]] == ["ssl+focus-long-kd@conv"] * 2
    assert all(r["distill"] == {"weight": 0.5, "temperature": 4.0} and r["finetune_epochs"] == 2 for r in rows[1:])
    assert (tmp_path / "runs" / "mnist-lenet-0" / "baseline").is_dir()
    r = load_benchmark("budget_report")
    text = r.table(r.aggregate([json.loads(path.read_text())]))
    assert "long recovery distilled from the baseline (1 + 2 epochs) | conv 5% |" in text


def test_a_parameter_budget_rerun_records_params_rows_and_their_verdicts(tmp_path: Path) -> None:
    b = load_benchmark("budget_results")
    path = tmp_path / "mnist-lenet-seed0.json"
    path.write_text(json.dumps({**_file([_row("baseline", None, 0.99)]), "limit_train": 128}))
    b._one("mnist:lenet:0", _args(tmp_path, rerun=["params"]))
    rows = json.loads(path.read_text())["rows"][1:]
    assert sorted(r["method"] for r in rows) == sorted(b.ROWS_OF["params"])
    assert all(r["budget_params"] == 0.05 and r["budget_macs"] is None and r["params"] <= 0.0501 for r in rows)
    assert all(r["finetune_epochs"] == 1 for r in rows)
    r = load_benchmark("budget_report")
    text = r.table(r.aggregate([json.loads(path.read_text())]))
    assert "| plain + SVD to a **parameter** budget | params 5% |" in text
    assert "- 5% of the parameters, compression-aware: nuclear norm, factorized to a **parameter** budget" in text


def test_long_recovery_rows_keep_the_baselines_total_epochs(tmp_path: Path) -> None:
    b = load_benchmark("budget_results")
    path = tmp_path / "mnist-lenet-seed0.json"
    recorded = {**_file([_row("baseline", None, 0.99)]), "limit_train": 128, "epochs": 2}
    path.write_text(json.dumps(recorded))
    b._one("mnist:lenet:0", _args(tmp_path, rerun=["params-long"], epochs=2))
    rows = json.loads(path.read_text())["rows"][1:]
    assert sorted(r["method"] for r in rows) == sorted(b.ROWS_OF["params-long"])
    # 40% of the baseline's 3 epochs trained, the other 2 spent recovering: 3 in all, as the baseline
    assert all((r["epochs"], r["finetune_epochs"]) == (1, 2) and r["params"] <= 0.0501 for r in rows)
    assert (tmp_path / "runs" / "mnist-lenet-0" / "nuclear-long").is_dir()
    r = load_benchmark("budget_report")
    text = r.table(r.aggregate([json.loads(path.read_text())]))
    assert "| plain + SVD to a **parameter** budget, long recovery (1 + 2 epochs) | params 5% |" in text
    assert "- 5% of the parameters, compression-aware: nuclear norm, factorized to a **parameter** budget, long" in text
    same = {r["method"]: r.get("ranks") for r in rows}
    assert same["plain+svd@nuclear-ranks@params-long"] == same["nuclear@params-long"] != {}
    assert "for plain + SVD at the same ranks + fine-tuning" in text


def test_a_rank_criterion_rerun_adds_its_rows_beside_those_of_the_other_criterion(tmp_path: Path) -> None:
    b = load_benchmark("budget_results")
    path = tmp_path / "mnist-lenet-seed0.json"
    old = _row("plain+svd@params-long", None, 0.5, budget_params=0.05, ranks={"fc1": 1}, rank_criterion="lost")
    path.write_text(json.dumps({**_file([_row("baseline", None, 0.99), old]), "limit_train": 128, "epochs": 2}))
    b._one("mnist:lenet:0", _args(tmp_path, rerun=["svd-long"], epochs=2))
    result = json.loads(path.read_text())
    rows = result["rows"]
    assert rows[1] == old and len(rows) == 3
    new = rows[2]
    assert new["method"] == "plain+svd@params-long" and new["rank_criterion"] == "log_kept" and new["ranks"]
    assert (new["epochs"], new["finetune_epochs"]) == (1, 2) and new["params"] <= 0.0501
    assert result["reruns"][0]["command"].endswith("--rerun svd-long")
    r = load_benchmark("budget_report")
    text = r.table(r.aggregate([result]))
    lost = "| plain + SVD to a **parameter** budget, long recovery [ranks by the summed lost energy] (1 + 1 epochs) |"
    assert lost in text
    assert "| plain + SVD to a **parameter** budget, long recovery (1 + 2 epochs) |" in text
    b._one("mnist:lenet:0", _args(tmp_path, rerun=["svd-long"], epochs=2, rank_criterion="lost"))
    again = json.loads(path.read_text())
    assert [row["rank_criterion"] for row in again["rows"][1:]] == ["lost", "log_kept"]  # the lost row redone in place
    assert again["reruns"][1]["command"].endswith("--rerun svd-long --rank-criterion lost")


def test_long_recovery_needs_an_epoch_to_recover_in() -> None:
    b = load_benchmark("budget_results")
    bench = b.Bench.__new__(b.Bench)
    bench.epochs, bench.finetune_epochs = 1, 0
    with pytest.raises(SystemExit, match="1 epochs in all leave none for recovery"):
        bench.long_split()
    bench.epochs, bench.finetune_epochs = 8, 2
    assert bench.long_split() == (4, 6)


def test_the_parameter_target_line_names_the_rows_that_meet_it_or_the_closest() -> None:
    r = load_benchmark("budget_report")
    rows = [_row("baseline", None, 0.994), _row("nuclear@params", None, 0.992, budget_params=0.05),
            _row("plain+svd@params", None, 0.975, budget_params=0.05)]
    for row in rows:
        row["params"] = 0.049 if row["method"] != "baseline" else 1.0
    text = r.table(r.aggregate([_file(rows)]))
    assert "points above the baseline's error: met by compression-aware: nuclear norm" in text  # 0.2 points down
    assert "plain + SVD to a **parameter** budget (4.90" not in text  # 1.9 points down: not listed
    rows[1]["accuracy"] = 0.990  # 0.4 points down
    text = r.table(r.aggregate([_file(rows)]))
    closest = "not met; closest: compression-aware: nuclear norm, factorized to a **parameter** budget (4.90 ± 0.00%"
    assert closest in text
    other = {**_file(rows), "dataset": "fashion-mnist"}  # the target is LeNet on MNIST's
    assert "Target:" not in r.table(r.aggregate([other]))
