"""Atomic writes and pickle-free checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import shrinkage.io.checkpoint as checkpoint_module
from shrinkage.errors import DataError
from shrinkage.io import atomic_open, load_checkpoint, save_checkpoint, write_csv, write_text

from .helpers import tiny_data, tiny_model


class Boom(RuntimeError):
    pass


def test_atomic_write_keeps_old_file_when_writer_raises(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    write_text(path, "old\n")
    with pytest.raises(Boom):
        with atomic_open(path) as handle:
            handle.write("half of the new")
            raise Boom
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary file left


def test_write_csv_columns(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", [{"a": 1, "b": 2}, {"a": 3, "c": 4}])
    assert (tmp_path / "a.csv").read_text() == "a,b,c\n1,2,\n3,,4\n"


def trained_pair() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    data = tiny_data(32, seed=5)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(data.images), data.labels).backward()
        optimizer.step()
    return model, optimizer


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    model, optimizer = trained_pair()
    generator = torch.Generator().manual_seed(11)
    torch.randperm(10, generator=generator)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, model.state_dict(), {"optimizer": optimizer.state_dict(), "epoch": 3,
                                                "generator": generator.get_state(), "nan": float("nan")})
    loaded = load_checkpoint(path)

    model2 = tiny_model(seed=99)
    model2.load_state_dict(loaded.model)
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.5)
    optimizer2.load_state_dict(loaded.state["optimizer"])
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    for i, state in optimizer.state_dict()["state"].items():
        assert torch.equal(state["momentum_buffer"], optimizer2.state_dict()["state"][i]["momentum_buffer"])
    assert optimizer2.param_groups[0]["lr"] == 0.1 and optimizer2.param_groups[0]["nesterov"] is True
    assert loaded.state["epoch"] == 3
    g2 = torch.Generator()
    g2.set_state(loaded.state["generator"])
    assert torch.equal(torch.randperm(10, generator=generator), torch.randperm(10, generator=g2))

    # one more step on each: identical weights, so every piece of state came back
    data = tiny_data(32, seed=6)
    for m, o in ((model, optimizer), (model2, optimizer2)):
        o.zero_grad()
        F.cross_entropy(m(data.images), data.labels).backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert (tmp_path / "checkpoint.json").is_file()


def test_crash_while_saving_leaves_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.safetensors"
    model, _ = trained_pair()
    save_checkpoint(path, model.state_dict(), {"epoch": 1})

    def crash(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"partial")
        raise Boom

    monkeypatch.setattr(checkpoint_module, "save_file", crash)
    with pytest.raises(Boom):
        save_checkpoint(path, tiny_model(seed=7).state_dict(), {"epoch": 2})
    loaded = load_checkpoint(path)
    assert loaded.state["epoch"] == 1
    assert torch.equal(loaded.model["fc1.weight"], model.state_dict()["fc1.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "checkpoint.safetensors"]


def test_corrupt_or_missing_checkpoint_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(DataError, match="bad.safetensors"):
        load_checkpoint(tmp_path / "bad.safetensors")
