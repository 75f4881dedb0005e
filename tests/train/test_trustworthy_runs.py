"""Runs you can trust: bad input fails early with one line naming the key, value or file.

Duplicate YAML keys, out-of-range values, latency batches that do not fit, unwritable
output paths, reruns of a finished run with other settings, corrupted checkpoints and
temporary files left by a killed write.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import random
import re
import struct
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

import shrinkage.io.checkpoint as checkpoint_module
from shrinkage.cli.main import main
from shrinkage.config import ReportConfig, RunConfig, parse_config, to_dict
from shrinkage.config.loader import load_yaml
from shrinkage.errors import ConfigError, DataError
from shrinkage.io import load_checkpoint, save_checkpoint
from shrinkage.train import CHECKPOINT, Trainer, pipeline, run_experiment, seed_everything

from support.config import config_error

from .helpers import tiny_config, tiny_data, tiny_model

BASE = textwrap.dedent(
    """\
    name: t
    model: {name: lenet}
    train:
      lr: 0.01
      epochs: 2
    regularization:
      rules:
        - select: {types: [Conv2d]}
          groups: [filters]
          penalty: {kind: group_lasso, strength: 1.0e-3}
    """
)


# --- 1. duplicate YAML keys ------------------------------------------------------------


def test_duplicate_key_names_file_line_and_dotted_key() -> None:
    text = BASE.replace("epochs: 2\n", "epochs: 2\n  lr: 0.5\n")
    assert config_error(text) == "run.yaml: line 6: duplicate key 'train.lr'"


def test_duplicate_top_level_section() -> None:
    message = config_error(BASE + "train: {lr: 0.1, epochs: 1}\n")
    assert message == "run.yaml: line 11: duplicate key 'train'"


def test_duplicate_key_inside_a_list_of_rules() -> None:
    text = BASE.replace("strength: 1.0e-3}", "strength: 1.0e-3, strength: 2.0e-3}")
    assert config_error(text) == "run.yaml: line 10: duplicate key 'regularization.rules[0].penalty.strength'"


def test_duplicate_key_in_an_override_value() -> None:
    message = config_error(BASE, ("train.lr_schedule={kind: step, kind: cosine}",))
    assert "--set train.lr_schedule=" in message and "duplicate key 'train.lr_schedule.kind'" in message


def test_merge_keys_may_override_and_sibling_mappings_may_share_keys() -> None:
    text = "base: &b {lr: 0.1, epochs: 2}\ntrain:\n  <<: *b\n  epochs: 3\nfinetune: {epochs: 1, lr: 0.2}\n"
    assert load_yaml(text) == {"base": {"lr": 0.1, "epochs": 2}, "train": {"lr": 0.1, "epochs": 3},
                               "finetune": {"epochs": 1, "lr": 0.2}}


# --- 2. value ranges ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.seed=18446744073709551616", "train.seed: must be an integer in [0, 9223372036854775807], "
                                            "got 18446744073709551616"),
        ("train.seed=-1", "train.seed: must be an integer in [0, 9223372036854775807], got -1"),
        ("train.epochs=1000000000000", "train.epochs: must be an integer in [0, 100000], got 1000000000000"),
        ("finetune.epochs=1000000", "finetune.epochs: must be an integer in [0, 100000], got 1000000"),
        ("train.lr_schedule={kind: step, step_size: 1000000}",
         "train.lr_schedule.step_size: must be an integer in [1, 100000], got 1000000"),
        ("data.batch_size=2000000", "data.batch_size: must be an integer in [1, 1048576], got 2000000"),
        ("data.test_batch_size=2000000", "data.test_batch_size: must be an integer in [1, 1048576], got 2000000"),
        ("report.latency_batch_sizes=[1, 100000]",
         "report.latency_batch_sizes: must be an integer in [1, 65536], got 100000"),
        ("report.repeats=100000", "report.repeats: must be an integer in [1, 10000], got 100000"),
    ],
)
def test_out_of_range_values_name_key_value_and_bound(override: str, expected: str) -> None:
    assert config_error(BASE, (override,)) == f"--set {override}: {expected}"


def test_values_at_the_bounds_are_accepted_and_the_largest_seed_seeds_everything() -> None:
    bounds = ("train.seed=9223372036854775807", "train.epochs=100000", "report.latency_batch_sizes=[65536]")
    config = parse_config(BASE, "run.yaml", bounds)
    assert (config.train.seed, config.train.epochs, config.report.latency_batch_sizes) == (2**63 - 1, 100000, (65536,))
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        seed_everything(config.train.seed)  # torch, NumPy (seed % 2**32) and random all take it
        assert torch.initial_seed() == 2**63 - 1
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


# --- shared: a whole run (train, compact, report) in about a second ----------------------


@pytest.fixture
def tiny_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_experiment/report_run on the tiny model and synthetic data of the training tests."""
    monkeypatch.setattr(pipeline, "build_model", lambda model_config: tiny_model())
    monkeypatch.setattr(pipeline, "load_datasets", lambda config, device: (tiny_data(96, seed=1), tiny_data(60, seed=2)))


def quick_config(**report: Any) -> RunConfig:
    config = tiny_config(epochs=1, finetune=0)
    settings = {"latency_batch_sizes": (2,), "repeats": 1, "plots": False, **report}
    return dataclasses.replace(config, report=ReportConfig(**settings))


def interrupt(row: dict[str, Any]) -> None:
    """``on_epoch_end`` hook: Ctrl-C right after the first epoch's checkpoint."""
    raise KeyboardInterrupt


def with_changes(config: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """``config`` with some fields of some sections replaced: ``with_changes(c, compact={"energy": 0.8})``."""
    changed = {name: dataclasses.replace(getattr(config, name), **fields) for name, fields in sections.items()}
    return dataclasses.replace(config, **changed)


# --- 2. a latency batch that does not fit fails before training --------------------------


class Hungry(nn.Sequential):
    """The tiny model, failing like an out-of-memory device on batches above 1000."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1000:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} GiB")
        return super().forward(x)


def test_latency_batch_too_large_for_memory_fails_before_training(
    tmp_path: Path, tiny_pipeline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline, "build_model", lambda model_config: Hungry(OrderedDict(tiny_model().named_children())))
    run = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        run_experiment(quick_config(latency_batch_sizes=(1, 4096, 64)), run)
    message = str(info.value)
    assert message.startswith("report.latency_batch_sizes: the model cannot run a batch of 4096 on cpu")
    assert "out of memory" in message and "\n" not in message
    assert not run.exists()  # refused before anything was trained or written


def test_latency_preflight_leaves_model_mode_and_rng_untouched() -> None:
    model = tiny_model()
    state = torch.get_rng_state()
    pipeline._check_latency_batch_fits(model, (1, 8, 8), quick_config(latency_batch_sizes=(3, 17)))
    assert model.training and torch.equal(state, torch.get_rng_state())


# --- 3. unwritable output paths ----------------------------------------------------------


def test_run_directory_under_a_regular_file(tmp_path: Path, tiny_pipeline: None) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    with pytest.raises(DataError) as info:
        run_experiment(quick_config(), tmp_path / "file" / "run")
    assert str(info.value) == (f"cannot write run directory {tmp_path / 'file' / 'run'}: "
                               f"{tmp_path / 'file'} is a file, not a directory")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a Linux /proc")
def test_run_directory_in_proc(tiny_pipeline: None) -> None:
    with pytest.raises(DataError, match=r"^cannot write run directory /proc/shrinkage-test/run: "):
        run_experiment(quick_config(), "/proc/shrinkage-test/run")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a user that permissions apply to")
def test_read_only_run_directory(tmp_path: Path, tiny_pipeline: None) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(DataError, match="cannot write run directory .*locked/run: Permission denied"):
            run_experiment(quick_config(), parent / "run")
    finally:
        parent.chmod(0o700)


def test_permission_denied_names_the_run_directory(
    tmp_path: Path, tiny_pipeline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what a read-only directory does for a normal user (the test may run as root, which permissions skip)
    def denied(path: Path, data: Any) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(pipeline, "write_yaml", denied)
    with pytest.raises(DataError) as info:
        run_experiment(quick_config(), tmp_path / "run")
    assert str(info.value) == f"cannot write run directory {tmp_path / 'run'}: {os.strerror(errno.EACCES)}"


def test_unwritable_out_is_one_line_from_the_cli(
    tmp_path: Path, tiny_pipeline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(quick_config()), sort_keys=False))
    (tmp_path / "file").write_text("")
    assert main(["-q", "train", str(config), "--out", str(tmp_path / "file" / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot write run directory {tmp_path / 'file' / 'run'}: "
                   f"{tmp_path / 'file'} is a file, not a directory"]


def test_trainer_alone_reports_an_unwritable_run_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    trainer = Trainer(quick_config(), tiny_model(), tiny_data(32, seed=1), tiny_data(20, seed=2), tmp_path / "file" / "r")
    with pytest.raises(DataError, match="cannot write run directory"):
        trainer.fit()


def test_checkpoint_write_failing_mid_run_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(tensors: dict, filename: str, metadata: dict) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(checkpoint_module, "save_file", disk_full)
    trainer = Trainer(quick_config(), tiny_model(), tiny_data(32, seed=1), tiny_data(20, seed=2), tmp_path)
    with pytest.raises(DataError) as info:
        trainer.fit()
    assert str(info.value) == f"cannot write checkpoint {tmp_path / CHECKPOINT}: {os.strerror(errno.ENOSPC)}"
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left behind


# --- 4. rerunning a finished run with other settings -------------------------------------


def outputs(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}


def test_rerun_with_other_compact_settings_is_refused_and_overwrites_nothing(
    tmp_path: Path, tiny_pipeline: None
) -> None:
    run = tmp_path / "run"
    config = quick_config()
    run_experiment(config, run)
    before = outputs(run)
    with pytest.raises(ConfigError) as info:
        run_experiment(with_changes(config, compact={"energy": 0.8}), run)
    message = str(info.value)
    assert message.startswith(f"{run} holds a finished run with other settings (compact.energy: 0.9 there, 0.8 now)")
    assert "--out" in message and f"shrinkage compact {run}" in message and f"shrinkage report {run}" in message
    assert outputs(run) == before


def test_rerun_with_other_report_or_training_settings_is_refused(tmp_path: Path, tiny_pipeline: None) -> None:
    run = tmp_path / "run"
    config = quick_config()
    run_experiment(config, run)
    before = outputs(run)
    with pytest.raises(ConfigError, match=r"\(report\.repeats: 1 there, 3 now\)"):
        run_experiment(with_changes(config, report={"repeats": 3}), run)
    with pytest.raises(ConfigError, match=r"\(train\.lr: 0\.05 there, 0\.1 now\)") as info:
        run_experiment(with_changes(config, train={"lr": 0.1}), run)
    assert "shrinkage compact" not in str(info.value)  # recompacting cannot change the training
    with pytest.raises(ConfigError, match=r"\(device: 'cpu' there, 'cuda' now\)"):
        pipeline._refuse_changed_rerun(dataclasses.replace(config, device="cuda"), run)
    assert outputs(run) == before


def test_rerun_with_the_same_config_re_reports(tmp_path: Path, tiny_pipeline: None) -> None:
    run = tmp_path / "run"
    config = quick_config()
    first = run_experiment(config, run)
    (run / "report.md").unlink()
    # what resuming may change: where the data is, eval batching, out_dir
    same = with_changes(config, data={"dir": "elsewhere", "test_batch_size": 7})
    again = run_experiment(dataclasses.replace(same, out_dir="other-runs"), run)
    assert (run / "report.md").is_file()
    assert again["training"] == first["training"]  # nothing retrained
    assert again["accuracy"]["dense"]["accuracy"] == first["accuracy"]["dense"]["accuracy"]


def test_a_section_this_version_does_not_know_is_compared_too(tmp_path: Path, tiny_pipeline: None) -> None:
    run = tmp_path / "run"
    config = quick_config()
    run_experiment(config, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["target"] = {"params": 1000}  # e.g. written by a newer shrinkage
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    with pytest.raises(ConfigError, match=r"\(target: \{'params': 1000\} there, None now\)"):
        run_experiment(config, run)


def test_unfinished_run_keeps_its_config_when_a_rerun_is_refused(tmp_path: Path, tiny_pipeline: None) -> None:
    run = tmp_path / "run"
    config = with_changes(quick_config(), train={"epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, run, on_epoch_end=interrupt)
    saved = (run / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.05 there, 0\.2 now"):
        run_experiment(with_changes(config, train={"lr": 0.2}), run)
    assert (run / "config.yaml").read_bytes() == saved
    # an unfinished run has no results yet: other compact settings are taken over
    run_experiment(with_changes(config, compact={"energy": 0.8}), run)
    assert yaml.safe_load((run / "config.yaml").read_text())["compact"]["energy"] == 0.8


# --- 5. checksummed checkpoints, temporary files of killed writes ------------------------


def saved_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, tiny_model().state_dict(), {"epoch": 1, "rows": [{"loss": 0.5}]})
    return path


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def payload_start(path: Path) -> int:
    """Offset of the first tensor byte: after the 8-byte header length and the JSON header."""
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def test_flipped_byte_in_the_weights_is_reported_as_corrupted(tmp_path: Path) -> None:
    path = saved_checkpoint(tmp_path)
    size = path.stat().st_size
    middle = size // 2
    assert middle > payload_start(path)  # the middle of this file is tensor data
    flip_byte(path, middle)
    with pytest.raises(DataError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"checkpoint {path} is corrupted (checksum mismatch)")


def test_changed_state_in_the_header_is_reported_as_corrupted(tmp_path: Path) -> None:
    path = saved_checkpoint(tmp_path)
    data = path.read_bytes()
    assert data.count(b'\\"epoch\\": 1') == 1  # the state JSON, escaped inside the header JSON
    path.write_bytes(data.replace(b'\\"epoch\\": 1', b'\\"epoch\\": 7'))
    with pytest.raises(DataError, match="is corrupted \\(checksum mismatch\\)"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_reported_as_corrupted(tmp_path: Path) -> None:
    path = saved_checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"checkpoint {re.escape(str(path))} is corrupted or truncated"):
        load_checkpoint(path)


def test_checkpoint_without_checksum_loads_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "old.safetensors"
    weights = {"model/" + k: v.clone() for k, v in tiny_model().state_dict().items()}
    save_file(weights, str(path), metadata={"format": "shrinkage-checkpoint", "version": "1",
                                            "state": json.dumps({"epoch": 4})})
    with caplog.at_level(logging.WARNING, logger="shrinkage.io.checkpoint"):
        assert load_checkpoint(path).state == {"epoch": 4}
        assert load_checkpoint(path).state == {"epoch": 4}
    assert [r.getMessage() for r in caplog.records if "no checksum" in r.getMessage()] == [
        f"checkpoint {path} has no checksum (written by an older shrinkage): loading it unverified"
    ]
    # a current-version file never lacks one: without it, it was damaged
    save_file(weights, str(path), metadata={"format": "shrinkage-checkpoint", "version": "2",
                                            "state": json.dumps({"epoch": 4})})
    with pytest.raises(DataError, match="is corrupted \\(its checksum is missing\\)"):
        load_checkpoint(path)


def test_resuming_from_a_corrupted_checkpoint_says_corrupted(tmp_path: Path) -> None:
    config = with_changes(quick_config(), train={"epochs": 2})
    data = tiny_data(32, seed=1), tiny_data(20, seed=2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, tiny_model(), *data, tmp_path, on_epoch_end=interrupt).fit()
    path = tmp_path / CHECKPOINT
    flip_byte(path, path.stat().st_size - 3)  # the last tensor's bytes
    with pytest.raises(DataError) as info:
        Trainer(config, tiny_model(), *data, tmp_path).fit()
    message = str(info.value)
    assert message.startswith(f"checkpoint {path} is corrupted (checksum mismatch)") and "last good" not in message


def dead_pid() -> int:
    """A pid no process can have (above the kernel's limit)."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except (OSError, ValueError):
        return 99_999_999


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    path = saved_checkpoint(tmp_path)
    stale = tmp_path / f".{CHECKPOINT}.{dead_pid()}.k2x_9abc.tmp"
    stale_metrics = tmp_path / f".metrics.csv.{dead_pid()}.zz01ab_c.tmp"
    live = tmp_path / f".{CHECKPOINT}.{os.getpid()}.live0001.tmp"  # this process: may be mid-write
    unrelated = tmp_path / ".notes.tmp"
    for p in (stale, stale_metrics, live, unrelated):
        p.write_bytes(b"partial")
    load_checkpoint(path)
    assert not stale.exists() and not stale_metrics.exists()
    assert live.exists() and unrelated.exists()
    stale.write_bytes(b"partial")
    saved_checkpoint(tmp_path)
    assert not stale.exists()


def test_interrupted_write_removes_its_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = saved_checkpoint(tmp_path)
    before = outputs(tmp_path)

    def interrupted(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, tiny_model(seed=3).state_dict(), {"epoch": 2})
    assert outputs(tmp_path) == before  # old checkpoint intact, no temporary file left


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_temp_file_of_a_killed_writer_is_removed_by_the_next_save(tmp_path: Path) -> None:
    path = saved_checkpoint(tmp_path)
    writer = textwrap.dedent(
        """\
        import sys, time
        from shrinkage.io.atomic import atomic_path
        with atomic_path(sys.argv[1]) as tmp:
            tmp.write_bytes(b"half a checkpoint")
            print(tmp.name, flush=True)
            time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", writer, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        temp_name = child.stdout.readline().strip()
        assert temp_name.startswith(f".{CHECKPOINT}.{child.pid}.")
    finally:
        child.kill()  # SIGKILL: no finally block of the writer runs
        child.wait()
        child.stdout.close()
    assert (tmp_path / temp_name).exists()
    save_checkpoint(path, tiny_model().state_dict(), {"epoch": 2})
    assert not (tmp_path / temp_name).exists()
    assert load_checkpoint(path).state["epoch"] == 2


def test_compact_and_report_into_an_unwritable_run_dir_give_one_line(tmp_path, monkeypatch) -> None:
    """``shrinkage compact`` / ``report`` write into an existing run directory; a write that
    fails there (read-only mount, full disk) is one line naming it, not a traceback."""
    import shrinkage.train.pipeline as pipeline
    from shrinkage.errors import DataError

    from types import SimpleNamespace

    fake = SimpleNamespace(config=SimpleNamespace(compact=None), model=None, test=SimpleNamespace(images=None), rows=[])

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pipeline, "load_run", lambda run_dir: fake)
    monkeypatch.setattr(pipeline, "compact_model", lambda *a, **k: object())
    monkeypatch.setattr(pipeline, "example_inputs", lambda images: None)
    monkeypatch.setattr(pipeline, "save_compact", refuse)
    with pytest.raises(DataError, match=r"cannot write compact model into .*: Permission denied"):
        pipeline.compact_run(tmp_path)
    monkeypatch.setattr(pipeline, "COMPACT_WEIGHTS", "absent.safetensors")
    monkeypatch.setattr(pipeline, "build_report", refuse)
    with pytest.raises(DataError, match=r"cannot write report into .*: Permission denied"):
        pipeline.report_run(tmp_path)
