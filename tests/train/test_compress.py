"""Compression to a budget: selection, recovery fine-tuning, saved results, the CLI.

A LeNet run is trained once per module on MNIST-shaped synthetic data (the pipeline's
data source is replaced), so every compression below takes seconds.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import shrinkage
from shrinkage import Budget
from shrinkage.budget import RankCriterion, Taylor
from shrinkage.cli.main import main
from shrinkage.config import PruneImportance, SelectionMethod, TargetConfig, load_config, parse_config
from shrinkage.data import DatasetSpec, ImageDataset
from shrinkage.errors import ConfigError
from shrinkage.metrics import count_macs, count_parameters
from shrinkage.train import compress_run, default_out_dir, finetune, load_run, run_experiment, setup
from shrinkage.train.compress import Factorization, Pruning, selection_for
from shrinkage.train.recover import distillation_loss
from shrinkage.zoo import LeNet

REPO = Path(__file__).resolve().parents[2]
QUICK = ["train.epochs=1", "data.limit_train=192", "data.batch_size=32", "report.repeats=1",
         "report.latency_batch_sizes=[2]", "report.plots=false"]  # fmt: skip


def synthetic(split: str, data_dir: object = None) -> ImageDataset:
    """MNIST-shaped images whose mean intensity tells the class: learnable in one epoch."""
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 256 if split == "train" else 100
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randn(n, 1, 28, 28, generator=g) * 0.3 + labels.view(-1, 1, 1, 1) / 10
    return ImageDataset(images, labels, 10, f"synthetic/{split}")


@pytest.fixture(scope="module")
def data_source() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        spec = DatasetSpec("mnist", in_channels=1, image_size=28, num_classes=10, load=synthetic)
        patch.setattr(setup, "get_dataset_spec", lambda name: spec)
        yield


@pytest.fixture(scope="module")
def dense_run(data_source: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished LeNet baseline run (no target)."""
    run = tmp_path_factory.mktemp("runs") / "lenet"
    config = load_config(REPO / "configs" / "lenet_baseline.yaml", QUICK)
    report = run_experiment(config, run)
    assert "target" not in report and "## Target" not in (run / "report.md").read_text()
    return run


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert err and err[-1].startswith("error: ") and sum(line.startswith("error: ") for line in err) == 1, err
    return err[-1]


def test_prune_to_a_mac_budget_with_recovery(dense_run: Path, tmp_path: Path) -> None:
    out, result = compress_run(dense_run, TargetConfig(macs=0.25, finetune_epochs=2), tmp_path / "out")
    row = result["side_by_side"]["macs"]
    assert row["met"] and 0.25 * 0.98 <= row["achieved"] <= 0.25
    assert result["settings"]["method"] == "prune" and result["settings"]["method_from"] == "regularization"
    accuracy = result["accuracy"]
    assert accuracy["n"] == 100 and all(0 <= accuracy[k] <= 1 for k in ("dense", "selected", "finetuned"))
    rows = result["recovery"]["rows"]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["test_accuracy"] == accuracy["finetuned"]
    assert result["epochs"] == {"dense_run": {"train": 1, "finetune": 0}, "recovery": 2, "total": 3}
    for name in ("config.yaml", "target.safetensors", "target.json", "target.md"):
        assert (out / name).is_file(), name
    assert json.loads((out / "target.json").read_text())["side_by_side"] == result["side_by_side"]
    assert load_config(out / "config.yaml").target == TargetConfig(macs=0.25, finetune_epochs=2)
    # the saved model is the fine-tuned one compacted again: it still meets the budget,
    # so the zeros held through fine-tuning
    dense, x = load_run(dense_run).model, synthetic("test").images[:32]
    saved = shrinkage.load(out / "target.safetensors", LeNet()).eval()
    assert count_macs(saved, (x,)).total / count_macs(dense, (x,)).total == pytest.approx(row["achieved"])
    assert count_parameters(saved) == result["size"]["final"]["params"]
    assert "| MACs (fraction of dense) | 0.25 | 0.2" in (out / "target.md").read_text()


def pruned_lenet() -> tuple[nn.Module, shrinkage.PruneResult, ImageDataset]:
    torch.manual_seed(0)
    dense = LeNet().eval()
    data = synthetic("train")
    return dense, shrinkage.prune(dense, (data.images[:8],), Budget(macs=0.3)), data


def test_the_mask_keeps_removed_structures_zero_through_finetuning() -> None:
    dense, pruned, data = pruned_lenet()
    x = data.images[:8]
    # every weight nudged off zero, as a momentum buffer or weight decay from elsewhere would:
    # the coupled zeros alone would otherwise sit at a stationary point and prove nothing
    with torch.no_grad():
        for p in pruned.model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    unmasked = copy.deepcopy(pruned.model)
    finetune(pruned.model, data, data, 1, 0.05, batch_size=64, mask=pruned.zero_mask(), weight_decay=1e-3)
    finetune(unmasked, data, data, 1, 0.05, batch_size=64, weight_decay=1e-3)
    kept = shrinkage.compact(pruned.model, (x,))
    assert count_macs(kept, (x,)).total == count_macs(pruned.compact, (x,)).total
    assert count_macs(kept, (x,)).total / count_macs(dense, (x,)).total <= 0.3
    assert count_macs(shrinkage.compact(unmasked, (x,)), (x,)).total == count_macs(dense, (x,)).total  # the control


def test_distillation_changes_the_loss_and_follows_its_formula() -> None:
    dense, pruned, data = pruned_lenet()
    plain, distilled = copy.deepcopy(pruned.model), copy.deepcopy(pruned.model)
    a = finetune(plain, data, data, 1, 0.01, batch_size=64, mask=pruned.zero_mask(), seed=5)
    b = finetune(distilled, data, data, 1, 0.01, batch_size=64, teacher=dense, distill_weight=0.7,
                 temperature=2.0, seed=5)  # fmt: skip
    assert a[0]["train_loss"] == pytest.approx(a[0]["train_ce"])
    assert b[0]["train_loss"] != pytest.approx(b[0]["train_ce"])
    assert any(not torch.equal(p, q) for p, q in zip(plain.parameters(), distilled.parameters()))
    logits, labels = torch.randn(6, 10), torch.randint(0, 10, (6,))
    ce = nn.functional.cross_entropy(logits, labels)
    # a teacher that agrees with the student adds nothing: only the hard term's share remains
    assert distillation_loss(logits, logits, labels, 0.25, 3.0) == pytest.approx(0.75 * float(ce), rel=1e-6)
    assert distillation_loss(logits, torch.zeros(6, 10), labels, 1.0, 1.0) > 0
    with pytest.raises(ConfigError, match="needs a teacher"):
        finetune(plain, data, data, 1, 0.01, distill_weight=0.5)


def test_finetuning_is_seeded_and_leaves_the_global_rng_alone() -> None:
    _, pruned, data = pruned_lenet()
    first, second = copy.deepcopy(pruned.model), copy.deepcopy(pruned.model)
    state = torch.get_rng_state()
    a = finetune(first, data, data, 1, 0.01, batch_size=32, mask=pruned.zero_mask(), seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = finetune(second, data, data, 1, 0.01, batch_size=32, seed=7)
    assert a[0]["train_loss"] == b[0]["train_loss"] and a[0]["test_accuracy"] == b[0]["test_accuracy"]
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), second.parameters()))


def test_factorize_method_under_a_mac_budget(dense_run: Path, tmp_path: Path) -> None:
    out, result = compress_run(dense_run, TargetConfig(macs=0.3, finetune_epochs=1), tmp_path / "out",
                               method=SelectionMethod.FACTORIZE)  # fmt: skip
    assert result["settings"] == {"source": str(dense_run), "method": "factorize", "method_from": "override",
                                  "baseline": None}  # fmt: skip
    assert result["side_by_side"]["macs"]["met"] and result["selection"]["ranks"]
    saved = shrinkage.load(out / "target.safetensors", LeNet())
    pairs = [name for name, m in saved.named_modules() if isinstance(m, nn.Sequential) and hasattr(m, "project")]
    assert sorted(pairs) == sorted(result["selection"]["ranks"])


def test_factorization_covers_the_nuclear_norm_layers() -> None:
    config = load_config(REPO / "configs" / "lenet_nuclear.yaml", ["compact.factorize_layers=[]"])
    assert selection_for(config, LeNet(), SelectionMethod.FACTORIZE, (1, 28, 28)) == Factorization(
        ("conv1", "conv2", "fc1"))  # every Conv2d/Linear but the excluded classifier
    named = load_config(REPO / "configs" / "lenet_nuclear.yaml", ["compact.factorize_layers=[fc1]"])
    assert selection_for(named, LeNet(), SelectionMethod.FACTORIZE, (1, 28, 28)) == Factorization(("fc1",))
    target = parse_config("name: t\nmodel: {name: lenet}\ntrain: {lr: 0.1, epochs: 1}\n", "t.yaml",
                          ["target.params=0.5", "target.round_to=4"])  # fmt: skip
    assert selection_for(target, LeNet(), SelectionMethod.PRUNE, (1, 28, 28)) == Pruning(4)


def test_pruning_measures_taylor_importance_on_training_batches_unless_told_norm(tmp_path: Path) -> None:
    train = synthetic("train")
    base = "name: t\nmodel: {name: lenet}\ntrain: {lr: 0.1, epochs: 1}\ndata: {batch_size: 32}\n"
    config = parse_config(base, "t.yaml", ["target.macs=0.5"])
    chosen = selection_for(config, LeNet(), SelectionMethod.PRUNE, (1, 28, 28), train)
    assert isinstance(chosen, Pruning) and isinstance(chosen.importance, Taylor)
    calibration = list(chosen.importance.batches)
    assert len(calibration) == 8 and all(x.shape == (32, 1, 28, 28) for x, _ in calibration)  # 256 images
    # the same seed gives the same batches: a rerun selects the same groups
    again = selection_for(config, LeNet(), SelectionMethod.PRUNE, (1, 28, 28), train)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(calibration, again.importance.batches, strict=True))
    norm = parse_config(base, "t.yaml", ["target.macs=0.5", "target.importance=norm"])
    assert selection_for(norm, LeNet(), SelectionMethod.PRUNE, (1, 28, 28), train) == Pruning(1, None)
    # without data (nothing to measure on) group norms are used
    assert selection_for(config, LeNet(), SelectionMethod.PRUNE, (1, 28, 28)) == Pruning(1, None)


def test_compress_records_the_importance_and_the_cli_takes_it(dense_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _, result = compress_run(dense_run, TargetConfig(macs=0.5), tmp_path / "taylor")
    assert result["selection"]["importance"] == "Taylor"
    assert main(["compress", str(dense_run), "--target", "macs=0.5", "--importance", "norm",
                 "--out", str(tmp_path / "norm")]) == 0  # fmt: skip
    saved = json.loads((tmp_path / "norm" / "target.json").read_text())
    assert saved["selection"]["importance"] == "GroupNorm"
    assert load_config(tmp_path / "norm" / "config.yaml").target.importance is PruneImportance.NORM
    assert main(["compress", str(dense_run), "--target", "macs=0.5", "--importance", "hessian"]) == 2
    assert error_line(capsys) == "error: --importance: unknown estimate 'hessian' (known: taylor, norm)"


def test_factorization_takes_the_rank_criterion_and_records_it(dense_run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    lost = load_config(REPO / "configs" / "lenet_nuclear.yaml", ["target.macs=0.5", "target.rank_criterion=lost"])
    assert selection_for(lost, LeNet(), SelectionMethod.FACTORIZE, (1, 28, 28)).criterion is RankCriterion.LOST
    assert main(["compress", str(dense_run), "--target", "params=0.3", "--method", "factorize",
                 "--rank-criterion", "lost", "--out", str(tmp_path / "lost")]) == 0  # fmt: skip
    saved = json.loads((tmp_path / "lost" / "target.json").read_text())
    assert saved["selection"]["rank_criterion"] == "lost" and saved["side_by_side"]["params"]["met"]
    assert load_config(tmp_path / "lost" / "config.yaml").target.rank_criterion is RankCriterion.LOST
    _, default = compress_run(dense_run, TargetConfig(params=0.3), tmp_path / "default",
                              method=SelectionMethod.FACTORIZE)  # fmt: skip
    assert default["selection"]["rank_criterion"] == "log_kept"
    assert main(["compress", str(dense_run), "--target", "macs=0.5", "--rank-criterion", "energy"]) == 2
    assert error_line(capsys) == "error: --rank-criterion: unknown criterion 'energy' (known: log_kept, lost)"


def test_a_directory_with_other_settings_is_never_overwritten(dense_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    compress_run(dense_run, TargetConfig(params=0.5), out)
    before = (out / "target.json").read_text()
    # a params target: MACs are shown achieved, with no target of their own
    assert "| MACs (fraction of dense) | – | " in (out / "target.md").read_text()
    with pytest.raises(ConfigError) as info:
        compress_run(dense_run, TargetConfig(params=0.5, finetune_epochs=1), out)
    assert "target.finetune_epochs: 0 there, 1 now" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="method: 'prune' there, 'factorize' now"):
        compress_run(dense_run, TargetConfig(params=0.5), out, method=SelectionMethod.FACTORIZE)
    with pytest.raises(ConfigError, match="target: None there"):  # the run directory itself
        compress_run(dense_run, TargetConfig(params=0.5), dense_run)
    assert (out / "target.json").read_text() == before
    other = tmp_path / "other"
    (other / "notes").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds other files"):
        compress_run(dense_run, TargetConfig(params=0.5), other)
    again, _ = compress_run(dense_run, TargetConfig(params=0.5), out)  # the same settings: redone
    assert again == out


def test_default_out_dir_names_the_targets() -> None:
    assert default_out_dir("runs/lenet_baseline", Budget(macs=0.25)) == Path("runs/lenet_baseline-macs0.25")
    assert default_out_dir(Path("runs/x/"), Budget(macs=0.5, params=0.1)) == Path("runs/x-macs0.5-params0.1")
    assert default_out_dir("r", Budget(latency_ms=2, batch_size=8)) == Path("r-latency_ms2-batch8")


def test_train_with_a_target_writes_the_target_files(data_source: None, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    run = tmp_path / "run"
    sets = [a for o in [*QUICK, "target.macs=0.3", "target.finetune_epochs=1"] for a in ("--set", o)]
    assert main(["-q", "train", str(REPO / "configs" / "lenet_baseline.yaml"), *sets, "--out", str(run),
                 "--no-progress"]) == 0  # fmt: skip
    assert "## Target (prune)" in capsys.readouterr().out
    for name in ("target.safetensors", "target.json", "target.md", "report.md", "compact.safetensors"):
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    assert report["target"]["side_by_side"]["macs"]["met"]
    assert report["target"]["accuracy"]["finetuned"] == report["target"]["recovery"]["rows"][-1]["test_accuracy"]
    assert main(["-q", "report", str(run)]) == 0  # the report reads the saved results again
    assert "| MACs (fraction of dense) | 0.3 |" in capsys.readouterr().out


def test_compress_command_with_a_baseline(dense_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    args = ["-q", "compress", str(dense_run), "--target", "macs=0.5", "--distill", "0.5", "--finetune-epochs", "1",
            "--baseline", str(dense_run), "--round-to", "2", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| MACs (fraction of dense) | 0.5 |" in printed and f"compressed model written to {out}" in printed
    result = json.loads((out / "target.json").read_text())
    base = result["baseline"]
    assert base["epochs"] == 1 and not base["regularized"]
    assert base["drop"] == pytest.approx(base["accuracy"] - result["accuracy"]["finetuned"])
    assert "baseline 1 (not the same total, unregularized)" in printed
    assert main([*args[:-2], "--out", str(out), "--temperature", "2"]) == 2
    assert "already holds results with other settings (target.temperature" in error_line(capsys)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--target", "mac=0.25"],
         "error: --target: unknown key 'mac' (known: macs, macs_of, params, latency_ms, batch_size)"),
        (["--target", "macs=abc"], "error: --target macs=abc: 'abc' is not a number"),
        (["--target", "macs=1.5"], "error: --target: budget macs must be a fraction in (0, 1]"),
        (["--target", "batch_size=2.5"], "error: --target batch_size=2.5: '2.5' is not an integer"),
        (["--target", "macs=0.2", "--target", "macs=0.3"], "error: --target: 'macs' is given twice"),
        (["--target", "macs=0.2", "--method", "lowrank"], "error: --method: unknown method 'lowrank'"),
        (["--target", "macs=0.2", "--distill", "2"], "error: --distill: must be in [0, 1], got 2.0"),
        (["--target", "macs=0.2", "--round-to", "0"], "error: --round-to: must be an integer"),
        (["--target", "macs=0.2", "--round-to", "eight"],
         "error: --round-to: 'eight' is neither an integer nor 'auto'"),
    ],
)
def test_compress_command_errors_are_one_line(args: list[str], expected: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["compress", str(tmp_path / "run"), *args]) == 2
    assert error_line(capsys).startswith(expected)


def test_compress_command_names_a_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compress", str(tmp_path / "absent"), "--target", "macs=0.5"]) == 2
    assert "absent" in error_line(capsys)


def test_ssl_run_with_a_mac_target_trains_under_the_controller_and_plots_it(data_source: None, tmp_path: Path) -> None:
    run = tmp_path / "ssl"
    overrides = [*QUICK, "report.plots=true", "finetune.epochs=0", "target.macs=0.3"]
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["-q", "train", str(REPO / "configs" / "lenet_ssl_filters_channels.yaml"), *sets, "--out", str(run),
                 "--no-progress"]) == 0  # fmt: skip
    assert (run / "plots" / "budget_control.png").is_file()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert "estimated_macs" in rows[0] and "target_macs" in rows[0]
    report = json.loads((run / "report.json").read_text())
    assert report["target"]["side_by_side"]["macs"]["met"]


def test_a_saved_model_compresses_as_its_run_directory_does(dense_run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    # a committed result or a model trained elsewhere has no run directory: the model file
    # and the config it was trained with stand in for it, with the same outcome
    model_file = tmp_path / "models" / "lenet.safetensors"
    model_file.parent.mkdir()
    shrinkage.save(load_run(dense_run).model, model_file)
    target = TargetConfig(macs=0.4, finetune_epochs=1)
    _, from_run = compress_run(dense_run, target, tmp_path / "from_run")
    out, from_file = compress_run(model_file, target, config=dense_run / "config.yaml")
    assert out == tmp_path / "models" / "lenet-macs0.4"
    assert from_file["accuracy"] == from_run["accuracy"] and from_file["size"] == from_run["size"]
    assert from_file["settings"]["source"] == str(model_file)
    a = shrinkage.load(out / "target.safetensors", LeNet()).state_dict()
    b = shrinkage.load(tmp_path / "from_run" / "target.safetensors", LeNet()).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the CLI takes the config and its overrides; another seed is another experiment
    assert main(["-q", "compress", str(model_file), "--config", str(dense_run / "config.yaml"), "--set",
                 "train.seed=3", "--target", "macs=0.4", "--out", str(tmp_path / "seed3")]) == 0  # fmt: skip
    assert load_config(tmp_path / "seed3" / "config.yaml").train.seed == 3


@pytest.mark.parametrize(
    ("source", "extra", "expected"),
    [
        ("model", [], "is a model file: give the config it was trained with (--config CONFIG.yaml)"),
        ("run", ["--config", "{run}/config.yaml"], "--config and --set apply to a model file"),
        ("run", ["--set", "train.seed=1"], "--config and --set apply to a model file"),
        ("gone.safetensors", ["--config", "{run}/config.yaml"], "gone.safetensors: no such run directory or model"),
        ("model", ["--config", "{run}/absent.yaml"], "absent.yaml"),
    ],
)
def test_compress_of_a_model_file_names_what_is_wrong(source: str, extra: list[str], expected: str, dense_run: Path,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_file = tmp_path / "model.safetensors"
    shrinkage.save(LeNet(), model_file)
    path = {"model": model_file, "run": dense_run}.get(source, tmp_path / source)
    args = [a.format(run=dense_run) for a in extra]
    assert main(["compress", str(path), "--target", "macs=0.5", *args, "--out", str(tmp_path / "out")]) == 2
    assert expected in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_pruning_finishes_at_the_rounded_widths_it_selected() -> None:
    """Filters a regularized run left at zero are removed by every compaction; after
    fine-tuning, the shipped model keeps the multiples of ``round_to`` the selection
    measured (zero channels kept for alignment), with the same MACs."""
    torch.manual_seed(0)
    model = LeNet().eval()
    with torch.no_grad():  # 5 of conv2's 50 filters and 3 of fc1's 500 units dead
        model.conv2.weight[:5], model.conv2.bias[:5] = 0, 0
        model.fc1.weight[:3], model.fc1.bias[:3] = 0, 0
    example = torch.randn(1, 1, 28, 28)
    selection = Pruning(round_to=8)
    selected = selection.select(model, example, Budget(macs=0.6))
    shipped = selection.finish(selected.model, example)
    widths = [shipped.conv1.out_channels, shipped.conv2.out_channels, shipped.fc1.out_features]
    # a multiple of 8, or the whole layer when rounding up would pass its width
    assert all(w % 8 == 0 or w == full for w, full in zip(widths, (20, 50, 500), strict=True)), widths
    assert count_macs(shipped, example).total / count_macs(model, example).total <= 0.6


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("batches", [0, 3])
def test_batchnorm_statistics_are_re_estimated_after_selection(batches: int, data_source: None,
                                                               tmp_path: Path) -> None:  # fmt: skip
    from shrinkage.train.compress import compress

    config = load_config(REPO / "configs" / "lenet_baseline.yaml", [*QUICK, "target.macs=0.5",
                         f"target.recalibrate_batches={batches}"])  # fmt: skip
    dense = _bn_net()
    with torch.no_grad():  # statistics of another input distribution, as a pruned model's are
        for m in dense.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(3.0)
                m.running_var.fill_(0.01)
    train, test = synthetic("train"), synthetic("test")
    result = compress(config, copy.deepcopy(dense), train, test, tmp_path / "out", method=SelectionMethod.PRUNE)
    saved = shrinkage.load(tmp_path / "out" / "target.safetensors", _bn_net())
    bn = [m for m in saved.modules() if isinstance(m, nn.BatchNorm2d)]
    if batches == 0:
        assert "batchnorm_recalibrated" not in result["accuracy"]
        assert all(bool((m.running_var == 0.01).all()) for m in bn)  # the dense model's, kept
    else:
        assert result["accuracy"]["batchnorm_recalibrated"] == {"layers": 2, "batches": 3}
        assert all(bool((m.running_var != 0.01).all()) for m in bn)
        assert "BatchNorm statistics re-estimated on 3 training batches" in (tmp_path / "out" / "target.md").read_text()


def test_compress_command_takes_the_recalibration_batches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compress", str(tmp_path / "run"), "--target", "macs=0.2", "--recalibrate-batches", "-1"]) == 2
    assert error_line(capsys).startswith("error: --recalibrate-batches: must be an integer")
