"""The command line: one-line errors with exit status 2, and one small run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from shrinkage.cli.main import main
from shrinkage.data import DatasetSpec, ImageDataset
from shrinkage.train import setup

REPO = Path(__file__).resolve().parents[2]


def one_error_line(capsys: pytest.CaptureFixture[str], only: bool = True) -> str:
    """The error line; with ``only`` it must be all of stderr (no logging before it)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not only or len(err) == 1, err
    return errors[0]


@pytest.fixture
def tiny_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    """MNIST-shaped synthetic data (the pipeline's data source), so a run takes seconds."""

    def load(split: str, data_dir: object) -> ImageDataset:
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = 256 if split == "train" else 100
        labels = torch.randint(0, 10, (n,), generator=g)
        images = torch.randn(n, 1, 28, 28, generator=g) * 0.3 + labels.view(-1, 1, 1, 1) / 10
        return ImageDataset(images, labels, 10, f"tiny-mnist/{split}")

    spec = DatasetSpec("mnist", in_channels=1, image_size=28, num_classes=10, load=load)
    monkeypatch.setattr(setup, "get_dataset_spec", lambda name: spec)


def test_bad_config_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text((REPO / "configs" / "demo.yaml").read_text().replace("momentum:", "momentun:"))
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys)
    assert "train.momentun" in line and "did you mean 'train.momentum'" in line and "bad.yaml" in line
    assert not (tmp_path / "run").exists()


def test_bad_override_and_missing_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(REPO / "configs" / "demo.yaml"), "--set", "compact.energy=0"]) == 2
    assert "compact.energy" in one_error_line(capsys)
    assert main(["train", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml" in one_error_line(capsys)
    assert main(["report", str(tmp_path / "no-run")]) == 2
    assert "no-run" in one_error_line(capsys)


def test_rule_that_selects_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_mnist: None) -> None:
    args = ["-q", "train", str(REPO / "configs" / "demo.yaml"), "--set", "regularization.rules[1].select.names=[conv9]",
            "--set", "data.limit_train=64", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 2
    assert "regularization.rules[1].select" in one_error_line(capsys, only=False)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_train_compact_report_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_mnist: None) -> None:
    run = tmp_path / "run"
    args = ["-q", "train", str(REPO / "configs" / "demo.yaml"), "--out", str(run), "--no-progress",
            "--set", "train.epochs=1", "--set", "finetune.epochs=1", "--set", "data.limit_train=200",
            "--set", "report.repeats=1", "--set", "report.latency_batch_sizes=[2]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "# Report: demo" in out and "## Training" in out
    for name in ("config.yaml", "metrics.csv", "checkpoint.safetensors", "checkpoint.json", "compact.safetensors",
                 "compact.json", "report.json", "report.md", "plots/layer_sparsity.png",
                 "plots/weights_conv1.png", "plots/singular_values.png"):
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    assert report["accuracy"]["dense"]["n"] == 100  # the whole test split despite limit_train
    assert report["accuracy"]["dense"]["accuracy"] == report["accuracy"]["compact"]["accuracy"]
    # the saved compact model rebuilds from a fresh LeNet, without pickle
    import shrinkage
    from shrinkage.zoo import LeNet

    loaded = shrinkage.load(run / "compact.safetensors", LeNet())
    assert sum(p.numel() for p in loaded.parameters()) == json.loads((run / "compact.json").read_text())["params"]

    assert main(["-q", "compact", str(run)]) == 0
    assert "compact model:" in capsys.readouterr().out
    assert main(["-q", "report", str(run)]) == 0
    assert "# Report: demo" in capsys.readouterr().out

    # the report measures the saved file: a smaller model saved there shows up in it
    smaller = shrinkage.compact(_without_conv2_filter(loaded), (torch.randn(2, 1, 28, 28),))
    shrinkage.save(smaller, run / "compact.safetensors")
    assert main(["-q", "report", str(run)]) == 0
    capsys.readouterr()
    report = json.loads((run / "report.json").read_text())
    assert report["size"]["compact"]["params"] == sum(p.numel() for p in smaller.parameters())
    assert report["equivalence"]["max_abs_diff"] > 0  # rechecked against the dense model, not copied


def _without_conv2_filter(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        model.conv2.weight[0] = 0
        model.conv2.bias[0] = 0
    return model.eval()


def test_usage_error_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train"]) == 2
    assert "usage:" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_evaluate_reports_a_saved_models_accuracy_params_and_macs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_mnist: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shrinkage
    from shrinkage.data import batches
    from shrinkage.metrics import count_parameters, evaluate
    from shrinkage.train import evaluate_saved
    from shrinkage.zoo import LeNet

    monkeypatch.setattr(evaluate_saved, "get_dataset_spec", setup.get_dataset_spec)
    torch.manual_seed(3)
    small = shrinkage.compact(_without_conv2_filter(LeNet()), (torch.randn(2, 1, 28, 28),))
    path = shrinkage.save(small, tmp_path / "small.safetensors")
    test = setup.get_dataset_spec("mnist").load("test", None)
    expected = evaluate(small, batches(test, 1000, shuffle=False)).accuracy

    assert main(["-q", "evaluate", str(path), "--model", "lenet", "--data", "mnist"]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy {100 * expected:.2f}% on 100 images" in out
    assert f"parameters {count_parameters(small):,} (" in out and "MACs " in out

    assert main(["-q", "evaluate", str(tmp_path / "none.safetensors"), "--model", "lenet", "--data", "mnist"]) == 2
    assert "none.safetensors does not exist" in one_error_line(capsys)
    assert main(["-q", "evaluate", str(path), "--model", "nosuchnet", "--data", "mnist"]) == 2
    assert "nosuchnet" in one_error_line(capsys)
