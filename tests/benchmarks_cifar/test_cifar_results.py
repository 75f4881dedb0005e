"""benchmarks/cifar_results.py: a speed-up is shown only for the model file that was timed."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from support.benchmark_modules import load_benchmark


def bench() -> ModuleType:
    return load_benchmark("cifar_results")


def _row(method: str, accuracy: float) -> dict[str, object]:
    return {"method": method, "seed": 0, "label": method, "accuracy": accuracy, "params_fraction": 0.5,
            "macs_fraction": 0.5, "epochs": 22,
            "model_file": f"results/cifar10/models/{method}-s0.safetensors"}  # fmt: skip


def test_a_rerun_row_loses_its_old_timing(tmp_path: Path) -> None:
    b = bench()
    (tmp_path / "models").mkdir()
    rows = [_row("baseline", 0.85), _row("prune50", 0.82)]
    for r in rows:
        (tmp_path / "models" / f"{r['method']}-s0.safetensors").write_bytes(b"weights of " + str(r["method"]).encode())
    digests = {f"{r['method']}-s0": b.file_digest(b.model_path(tmp_path, r)) for r in rows}
    latency = {"note": "2 threads", "models": digests, "batches": [
        {"batch_size": 1, "speedup": {"dense": 1.0, "baseline-s0": 1.0, "prune50-s0": 1.6},
         "control_ratio": 1.0, "reliable": True, "reason": "ok"}]}  # fmt: skip
    summary = b.summarize(rows, b.timed_now(rows, latency, tmp_path))
    assert [r["speedup"]["1"]["mean"] for r in summary["rows"]] == [1.0, 1.6]
    # the pruned row is redone: its file changes, its old speed-up no longer describes it
    (tmp_path / "models" / "prune50-s0.safetensors").write_bytes(b"another model")
    summary = b.summarize(rows, b.timed_now(rows, latency, tmp_path))
    assert summary["rows"][0]["speedup"]["1"]["mean"] == 1.0 and summary["rows"][1]["speedup"]["1"] is None
    text = b.markdown(summary)
    assert "| prune50 | 1 | 22 | 82.00 | – | 3.00 | 50.0% | 50.0% | – | – |" in text
    assert "was not timed" in text
    # a timing file from before digests were kept times nothing
    old = {k: v for k, v in latency.items() if k != "models"}
    assert all(r["speedup"]["1"] is None for r in b.summarize(rows, b.timed_now(rows, old, tmp_path))["rows"])


def test_torch_pruning_rows_count_the_epochs_of_their_own_recipe() -> None:
    """Read from the files benchmarks/cifar_torch_pruning.py wrote (committed results): the
    sparse-training row trained for its recipe's epochs, the others start from the 20-epoch
    baseline; both add their recovery epochs."""
    b = bench()
    results = Path(__file__).resolve().parents[2] / "results" / "cifar10"
    rows = {r["method"]: r for r in b.load_rows(results) if str(r["method"]).startswith("tp_")}
    sparse, plain = rows["tp_group_norm_sl50"], rows["tp_group_norm50"]
    assert sparse["epochs"] == 18 + 2 and plain["epochs"] == 20 + 2
    assert "after its sparse training" in sparse["label"] and "sparse" not in plain["label"]
    assert sparse["accuracy_selected"] > 0.5 and 0 < sparse["macs_fraction"] <= 0.5


def test_speedups_over_several_timing_runs_are_medians_with_their_range() -> None:
    b = load_benchmark("cifar_results")

    def run(fast: float, control: float, reliable: bool = True) -> dict[str, object]:
        return {"speedup": {"a-s0": fast, "b-s0": 2.0}, "control_ratio": control, "reliable": reliable,
                "reason": "off" if not reliable else "ok"}  # fmt: skip

    merged = b._over_runs(64, [run(1.3, 0.99), run(2.1, 1.01), run(1.8, 1.00)])
    assert merged["speedup"] == {"a-s0": 1.8, "b-s0": 2.0}
    assert merged["speedup_range"]["a-s0"] == [1.3, 2.1] and merged["control_ratio"] == 1.00
    assert merged["reliable"] and "0.990x to 1.010x" in merged["reason"]
    assert not b._over_runs(64, [run(1.3, 0.99), run(2.1, 1.2, reliable=False)])["reliable"]
    text = b._widest_ranges({"controls": [{"batch_size": 64, "speedup_range": merged["speedup_range"]}]}, count=1)
    assert text == ["Batch 64: widest ranges across the runs: a-s0 1.30x to 2.10x."]
