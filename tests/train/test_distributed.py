"""Training in two processes (gloo on the CPU) ends with the weights of one process.

``data.batch_size`` is the global batch: two ranks with half of it each must train what
one process trains with all of it, proximal steps (group Lasso, nuclear norm) and the
budget controller included, and a two-process run stopped after an epoch and resumed
must end exactly where an uninterrupted one does.

The two ranks are spawned once for the module (``two_ranks``): every scenario runs in
the same pair of processes and leaves its weights and facts in a directory; the tests
compare those with single-process runs made here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import Tensor

from shrinkage.cli.main import main
from shrinkage.config import (
    GroupLassoConfig,
    GroupName,
    NuclearNormConfig,
    ReportConfig,
    RuleConfig,
    RunConfig,
    SelectConfig,
    TargetConfig,
)
from shrinkage.data import ImageDataset
from shrinkage.errors import ConfigError
from shrinkage.train import Trainer, distributed, pipeline, run_experiment
from shrinkage.train.distributed import World

from train.helpers import Stop, stop_after, tiny_config, tiny_data, tiny_model, without_time

WORLD = 2
#: 97 = 6 batches of 16 and a last one of 1 sample: rank 1 has nothing of it (weight 0)
TRAIN_SIZE = 97
#: with a global batch of 8, the last batch of 45 holds 5 samples: 3 on rank 0, 2 on rank 1
CONTROLLED_SIZE = 45


def run_config(
    *, epochs: int = 2, finetune: int = 1, batch_size: int = 16, target: TargetConfig | None = None
) -> RunConfig:
    """The tiny config with group Lasso on conv1 and fc1 and a nuclear norm on fc2, strong enough
    to zero some of fc1's columns and a singular value of fc2 within two epochs."""
    base = tiny_config(epochs=epochs, finetune=finetune)
    rules = (
        RuleConfig(SelectConfig(types=("Conv2d",)), (GroupName.FILTERS,), GroupLassoConfig(0.3)),
        RuleConfig(SelectConfig(names=("fc1",)), (GroupName.FILTERS, GroupName.CHANNELS), GroupLassoConfig(0.3)),
        RuleConfig(SelectConfig(names=("fc2",)), (GroupName.MATRIX,), NuclearNormConfig(1.5)),
    )
    regularization = dataclasses.replace(base.regularization, rules=rules)
    data = dataclasses.replace(base.data, batch_size=batch_size)
    return dataclasses.replace(base, regularization=regularization, data=data, target=target)


def controlled_config() -> RunConfig:
    return run_config(epochs=4, finetune=0, batch_size=8, target=TargetConfig(macs=0.5))


def datasets(train_size: int = TRAIN_SIZE) -> tuple[ImageDataset, ImageDataset]:
    return tiny_data(train_size, seed=1), tiny_data(60, seed=2)


# --- what every rank runs ----------------------------------------------------------------


def scenarios(out: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Every two-process run of this module, in one pair of processes; returns weights and facts."""
    rank = distributed.rank()
    tensors: dict[str, Tensor] = {}
    facts: dict[str, Any] = {"world": dataclasses.asdict(distributed.current()),
                             "backend": torch.distributed.get_backend()}

    def keep(tag: str, trainer: Trainer, result: Any) -> None:
        tensors.update({f"{tag}/{k}": v for k, v in result.model.state_dict().items()})
        facts[tag] = {"rows": result.rows, "resumed_at": result.resumed_at,
                      "replica_differences": trainer.replica_differences}

    config = run_config()
    straight = Trainer(config, tiny_model(), *datasets(), out / "straight")
    keep("straight", straight, straight.fit())
    for stop in (1, 2):  # inside the first phase, and at the phase boundary
        with pytest.raises(Stop):
            Trainer(config, tiny_model(), *datasets(), out / f"stop{stop}", on_epoch_end=stop_after(stop)).fit()
        resumed = Trainer(config, tiny_model(seed=42), *datasets(), out / f"stop{stop}")  # weights from the checkpoint
        keep(f"stop{stop}", resumed, resumed.fit())

    controlled = Trainer(controlled_config(), tiny_model(), *datasets(CONTROLLED_SIZE), out / "controlled")
    keep("controlled", controlled, controlled.fit())
    facts["controlled"]["regularizer"] = json.loads(json.dumps(controlled.regularizer.state_dict(), default=str))

    # a replica that drifted (a weight and a strength scale on rank 1) is found and reset to rank 0's
    model = tiny_model()
    probe = Trainer(config, model, *datasets(), out / "probe")
    if rank == 1:
        with torch.no_grad():
            model.fc1.weight[0, 0] += 1e-3
        probe.regularizer.set_scale(0, 2.0)
    facts["probe"] = {"differ": distributed.sync_replicas(model, probe.regularizer),
                      "scale": probe.regularizer.scales[0]}
    tensors.update({f"probe/{k}": v for k, v in model.state_dict().items()})

    # the whole pipeline: rank 0 alone compacts and reports
    pipeline.build_model = lambda model_config: tiny_model()
    pipeline.load_datasets = lambda config, device: datasets()
    report_config = dataclasses.replace(
        run_config(epochs=1, finetune=0), report=ReportConfig(latency_batch_sizes=(2,), repeats=1, plots=False))
    facts["pipeline"] = {"report_keys": sorted(run_experiment(report_config, out / "pipeline"))}
    return tensors, facts


def rank_main(rank: int, port: int, out: str) -> None:
    """One spawned rank: the environment torchrun would set, the process group, the scenarios."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # two processes on the test machine's cores
    world = distributed.launched()
    with distributed.process_group(world, torch.device("cpu")):
        tensors, facts = scenarios(Path(out))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(Path(out) / f"rank{rank}.safetensors"))
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(facts), encoding="utf-8")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class Ranks:
    """What each of the two ranks left: weights by ``<scenario>/<name>`` and facts by scenario."""

    weights: list[dict[str, Tensor]]
    facts: list[dict[str, Any]]
    out: Path

    def state(self, rank: int, tag: str) -> dict[str, Tensor]:
        prefix = f"{tag}/"
        return {k[len(prefix):]: v for k, v in self.weights[rank].items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Ranks:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(rank_main, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    weights = [load_file(str(out / f"rank{r}.safetensors")) for r in range(WORLD)]
    facts = [json.loads((out / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(WORLD)]
    return Ranks(weights, facts, out)


def assert_same(a: dict[str, Tensor], b: dict[str, Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if atol == 0.0:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


# --- the tests ---------------------------------------------------------------------------


def test_the_torchrun_environment_makes_a_gloo_group_of_two_on_the_cpu(two_ranks: Ranks) -> None:
    assert [f["world"] for f in two_ranks.facts] == [
        {"rank": r, "size": WORLD, "local_rank": r, "distributed": True} for r in range(WORLD)]
    assert [f["backend"] for f in two_ranks.facts] == ["gloo"] * WORLD


def test_two_processes_train_what_one_trains_with_the_global_batch(two_ranks: Ranks, tmp_path: Path) -> None:
    one = Trainer(run_config(), tiny_model(), *datasets(), tmp_path).fit()
    ranks = [two_ranks.state(r, "straight") for r in range(WORLD)]
    assert_same(ranks[0], ranks[1])  # replicas stay identical without being re-synchronized...
    assert all(f["straight"]["replica_differences"] == [] for f in two_ranks.facts)
    single = {k: v for k, v in one.model.state_dict().items()}
    assert_same(ranks[0], single, atol=1e-5)  # ...and equal one process's weights

    # the proximal steps were active: fc1 lost input columns, fc2 a singular value
    regularized = one.rows[1]
    assert regularized["phase"] == "regularize" and regularized["epoch"] == 2
    assert regularized["fc1.channels.zero_groups"] > 0 and regularized["fc2.matrix.rank"] < 3
    assert (single["fc1.weight"] == 0).all(dim=0).any()  # and fine-tuning kept the columns at zero
    structure = [k for k in regularized if k.endswith((".zero_groups", ".rank"))]
    for rank in range(WORLD):
        rows = two_ranks.facts[rank]["straight"]["rows"]
        assert len(rows) == len(one.rows) == 3
        for mine, theirs in zip(rows, one.rows):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-5)  # the global mean
            assert mine["test_accuracy"] == theirs["test_accuracy"]
            assert {k: mine[k] for k in structure} == {k: theirs[k] for k in structure}


@pytest.mark.parametrize("stop", [1, 2])
def test_resume_in_two_processes_equals_uninterrupted(two_ranks: Ranks, stop: int) -> None:
    for rank in range(WORLD):
        facts = two_ranks.facts[rank]
        assert facts[f"stop{stop}"]["resumed_at"] == stop
        assert_same(two_ranks.state(rank, f"stop{stop}"), two_ranks.state(rank, "straight"))
        assert without_time(facts[f"stop{stop}"]["rows"]) == without_time(facts["straight"]["rows"])


def test_budget_controller_stays_the_same_on_every_rank(two_ranks: Ranks, tmp_path: Path) -> None:
    facts = [f["controlled"] for f in two_ranks.facts]
    assert facts[0]["regularizer"]["controller"]["updates"] > 0  # it did steer
    assert facts[0]["regularizer"] == facts[1]["regularizer"]
    assert all(f["replica_differences"] == [] for f in facts)
    assert_same(two_ranks.state(0, "controlled"), two_ranks.state(1, "controlled"))
    one = Trainer(controlled_config(), tiny_model(), *datasets(CONTROLLED_SIZE), tmp_path).fit()
    assert_same(two_ranks.state(0, "controlled"), one.model.state_dict(), atol=1e-5)


def test_a_replica_that_drifted_is_reset_to_rank_0s(two_ranks: Ranks) -> None:
    probes = [f["probe"] for f in two_ranks.facts]
    assert probes[0]["differ"] == probes[1]["differ"] == ["fc1.weight", "regularizer state"]
    assert probes[0]["scale"] == probes[1]["scale"] == 1.0
    assert_same(two_ranks.state(0, "probe"), two_ranks.state(1, "probe"))
    assert_same(two_ranks.state(0, "probe"), tiny_model().state_dict())


def test_only_rank_0_compacts_and_reports(two_ranks: Ranks) -> None:
    assert two_ranks.facts[0]["pipeline"]["report_keys"]
    assert two_ranks.facts[1]["pipeline"]["report_keys"] == []
    run = two_ranks.out / "pipeline"
    assert (run / "report.md").is_file() and (run / "compact.safetensors").is_file()
    assert json.loads((run / "checkpoint.json").read_text(encoding="utf-8"))["finished"]


# --- without processes -------------------------------------------------------------------


def test_global_batch_must_divide_among_the_processes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = run_config(batch_size=15)
    Trainer(config, tiny_model(), *datasets(), tmp_path / "one")  # one process: any size
    monkeypatch.setattr(distributed, "current", lambda: World(0, WORLD, 0, True))
    with pytest.raises(ConfigError) as info:
        Trainer(config, tiny_model(), *datasets(), tmp_path / "two")
    assert str(info.value) == ("data.batch_size: 15 is the global batch and must divide among the 2 processes "
                               "(use a multiple of 2)")


@pytest.mark.parametrize("size, parts", [(16, [8, 8]), (13, [7, 6]), (1, [1, 0])])
def test_shards_cover_the_global_batch_and_weigh_its_mean(size: int, parts: list[int]) -> None:
    images, labels = torch.randn(size, 1, 2, 2), torch.arange(size)
    shards = [distributed.shard(images, labels, World(r, WORLD, r, True)) for r in range(WORLD)]
    kept = [s for s, n in zip(shards, parts) if n]
    assert torch.equal(torch.cat([s.labels for s in kept]), labels)  # in order, nothing twice
    assert [s.weight for s in shards] == [n * WORLD / size for n in parts]
    assert shards[1].labels.numel() > 0  # a rank with no samples still runs a batch (weighted 0)
    # the mean over ranks of weight * (mean loss of the shard) is the mean over the global batch
    values = labels.float()
    averaged = sum(s.weight * values[s.labels].mean() for s in shards) / WORLD
    assert averaged == pytest.approx(values.mean())


def test_torchrun_environment_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.launched() == World()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.launched() == World(1, 2, 1)
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ConfigError, match=r"^RANK: expected an integer set by torchrun, got 'two'$"):
        distributed.launched()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match=r"^RANK=2, WORLD_SIZE=2: the rank must be in \[0, WORLD_SIZE\)$"):
        distributed.launched()


def test_backend_and_device_follow_the_device() -> None:
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.backend_for(torch.device("cuda")) == "nccl"
    assert distributed.local_device(torch.device("cpu"), World(1, 2, 1)) == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^device: 'cuda:0' names one GPU.*set device: cuda$"):
        distributed.local_device(torch.device("cuda:0"), World(1, 2, 1))


def test_only_train_and_demo_run_under_torchrun(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["report", "no-such-run"]) == 2
    assert capsys.readouterr().err == ("error: 'shrinkage report' runs in one process; only train and demo run "
                                       "under torchrun (started with 2 processes)\n")
