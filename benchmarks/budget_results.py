"""Compression to a MAC budget: compression-aware training against compressing afterwards.

    python benchmarks/budget_results.py                          # every dataset/model/seed, in parallel
    python benchmarks/budget_results.py --only mnist:lenet:0     # one (dataset, model, seed)
    python benchmarks/budget_results.py --device cuda --jobs 9   # where a GPU is available
    python benchmarks/budget_results.py --only mnist:lenet:0 --epochs 8 --finetune-epochs 2 --rerun ssl
                                                                 # redo the SSL rows of a recorded result

For each (dataset, model, seed), with the same total epochs for every row (``E``
regularized or plain, then ``F`` of fine-tuning after selection):

* ``baseline``: plain training for ``E + F`` epochs (the reference every drop is measured
  against); ``plain``: plain training for ``E`` epochs, the starting point of the
  after-the-fact methods;
* at each MAC budget: ``plain+svd`` (ranks chosen globally under the budget), ``plain+prune``
  (coupled channels pruned under the budget), ``nuclear`` and ``nuclear+sgl``
  (compression-aware training, Alvarez & Salzmann, then the same rank selection),
  ``plain+svd@nuclear-ranks`` (the plain model cut to the ranks the nuclear run chose),
  and ``ssl`` (coupled group Lasso whose strength a controller drives to the budget
  during training, then the exact selection), ``ssl+focus`` (the same, the group Lasso
  acting only on the weakest groups the budget needs: ``target.penalize: weakest``);
  ``ssl@conv`` and ``ssl+focus@conv`` the same two with the budget counting the conv
  layers' MACs only (``target.macs_of: [Conv2d]``, as the SSL paper reports LeNet) and
  the group Lasso on the conv layers only; ``params``: the plain, nuclear and nuclear +
  sparse group Lasso models factorized (and the plain one pruned) to 5% of the dense
  model's *parameters* instead of its MACs; ``params-long``: the same rows with
  ``LONG_TRAIN_SHARE`` of the baseline's ``E + F`` epochs spent training and the rest
  recovering after selection (4 + 6 where the others take 8 + 2), and the plain model cut to
  the nuclear run's ranks (``plain+svd@nuclear-ranks@params-long``); ``svd-long``: the
  plain + SVD row of ``params-long`` alone (a criterion's rerun without the trainings the
  other rows need); ``ssl-conv-long`` and ``ssl-focus-conv-long``: the two ``@conv`` SSL
  rows with the ``params-long`` split (the controller's warm-up, ramp and hold fit in the
  shorter training; a network cut to a few percent of its conv MACs has more to relearn);
  ``ssl-focus-conv-long-kd``: the focus one with its recovery distilled from the baseline
  of the same seed (trained again for it when its row is not redone: same seed, same model);
  each reported right after selection and after its fine-tuning (the
  removed structures held at zero).

Ranks are chosen by ``--rank-criterion`` (:class:`shrinkage.RankCriterion`, default the
product of the shares of energy kept); every factorized row records its criterion, and
rows recorded with the summed lost energy (``lost``, the earlier default) carry it in
their command.

MACs are whole-model (conv MACs are reported beside them; the ``@conv`` rows' budget is the conv MACs), accuracy is on the full test
set; every row carries the date it was recorded, and a file its reruns' commands. One JSON per (dataset, model, seed) goes to results/budget/; run
``python benchmarks/budget_report.py`` to aggregate seeds (mean ± std), draw the charts
and refresh the README table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

import shrinkage
from shrinkage import Budget, RankCriterion
from shrinkage.budget.factorize import ranks_under_budget
from shrinkage.compact.factorize import build_factorized
from shrinkage.config import RunConfig, parse_config
from shrinkage.data import batches
from shrinkage.io import write_json
from shrinkage.metrics import count_macs, count_parameters, evaluate
from shrinkage.train.recover import finetune
from shrinkage.train.setup import build_model, load_datasets, resolve_device, seed_everything
from shrinkage.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "budget"
BUDGETS = (0.10, 0.05)
#: parameter budgets of the ``params`` training (the compression-aware paper's measure)
PARAM_BUDGETS = (0.05,)
#: (dataset, model) pairs and the layers the low-rank methods act on (the classifier stays)
SETUPS = {
    ("mnist", "lenet"): ("conv1", "conv2", "fc1"),
    ("fashion-mnist", "lenet"): ("conv1", "conv2", "fc1"),
    ("fashion-mnist", "convnet"): ("conv1", "conv2", "conv3"),
}
SEEDS = (0, 1, 2)
BATCH_SIZE = 64
#: the nuclear norm's prox runs every this many steps (an SVD per step would double the epoch)
PROX_EVERY = 5
#: the trainings behind the rows, and the rows each one gives (``--rerun`` redoes some of them)
ROWS_OF = {
    "baseline": ("baseline",),
    "plain": ("plain+svd", "plain+prune"),
    "nuclear": ("nuclear", "plain+svd@nuclear-ranks"),
    "nuclear+sgl": ("nuclear+sgl",),
    "ssl": ("ssl",),
    "ssl-focus": ("ssl+focus",),
    "ssl-conv": ("ssl@conv",),
    "ssl-focus-conv": ("ssl+focus@conv",),
    "params": ("plain+svd@params", "plain+prune@params", "nuclear@params", "plain+svd@nuclear-ranks@params",
               "nuclear+sgl@params"),
    "params-long": ("plain+svd@params-long", "plain+prune@params-long", "nuclear@params-long",
                    "plain+svd@nuclear-ranks@params-long", "nuclear+sgl@params-long"),
    "svd-long": ("plain+svd@params-long",),
    "ssl-conv-long": ("ssl-long@conv",),
    "ssl-focus-conv-long": ("ssl+focus-long@conv",),
    "ssl-focus-conv-long-kd": ("ssl+focus-long-kd@conv",),
}
#: trainings whose recovery distills from the dense baseline of the same seed
DISTILLED = frozenset({"ssl-focus-conv-long-kd"})
#: (weight, temperature) of that distillation: the CIFAR-10 ``prune50kd`` row's
DISTILL = (0.5, 4.0)
#: ``params-long`` trains this share of the baseline's ``E + F`` epochs (at least one) and
#: spends the rest recovering after selection: a factorized model needs more than ``F`` epochs
#: to relearn what the cut took, and the total stays the baseline's
LONG_TRAIN_SHARE = 0.4
TRAININGS = frozenset(ROWS_OF)
log = logging.getLogger("budget_results")

_COMMON = """
name: {name}
model: {{name: {model}}}
data: {{name: {dataset}, batch_size: {batch_size}, test_batch_size: 1000}}
train: {{lr: 0.02, momentum: 0.9, weight_decay: 5.0e-4, epochs: {epochs}, lr_schedule: {{kind: cosine}}, seed: {seed}}}
finetune: {{epochs: 0}}
compact: {{factorize: false}}
report: {{latency_batch_sizes: [1], repeats: 1}}
"""
_NUCLEAR = """
    - select: {{names: [{layers}]}}
      groups: [matrix]
      penalty: {{kind: nuclear_norm, strength: {strength}}}
      every: {every}
"""
_SGL = """
    - select: {{names: [{layers}]}}
      groups: [filters]
      penalty: {{kind: sparse_group_lasso, strength: 3.0e-3, alpha: 0.5}}
"""
_SSL = """
    - select: {{names: [{layers}]}}
      groups: [coupled]
      penalty: {{kind: group_lasso, strength: 1.0e-3, scale_by_size: true}}
"""


def _config(dataset: str, model: str, seed: int, epochs: int, rules: str, extra: list[str], device: str) -> RunConfig:
    text = _COMMON.format(name=f"{dataset}-{model}", model=model, dataset=dataset, epochs=epochs, seed=seed,
                          batch_size=BATCH_SIZE)
    text += "regularization:\n  mode: proximal\n  rules:" + (rules if rules else " []\n")
    # Fashion-MNIST is found through $SHRINKAGE_DATA_DIR; MNIST falls back to the bundled copy
    overrides = [f"device={device}", *extra]
    return parse_config(text, "budget_results", overrides)


class Bench:
    """One (dataset, model, seed): its data, trained models and measured rows."""

    def __init__(self, dataset: str, model: str, seed: int, epochs: int, finetune_epochs: int,
                 device: str, runs: Path, limit_train: int | None,
                 criterion: RankCriterion = RankCriterion.LOG_KEPT) -> None:  # fmt: skip
        self.dataset, self.model_name, self.seed = dataset, model, seed
        self.criterion = criterion
        self.epochs, self.finetune_epochs = epochs, finetune_epochs
        self.device = device
        self.layers = SETUPS[(dataset, model)]
        self.runs = runs / f"{dataset}-{model}-{seed}"
        self.extra = [f"data.limit_train={limit_train}"] if limit_train else []
        base = _config(dataset, model, seed, epochs, "", self.extra, device)
        self.train_device = resolve_device(device)
        self.train_set, self.test_set = load_datasets(base, self.train_device)
        self.example = self.test_set.images[:1].clone().cpu()
        self.rows: list[dict[str, Any]] = []
        #: called with the rows after each one: a run stopped midway still leaves its results
        self.on_row: Any = None
        self.dense_macs = self.dense_params = self.dense_conv_macs = 0

    # -- training ------------------------------------------------------------------------
    def train(self, tag: str, rules: str, epochs: int, extra: tuple[str, ...] = ()) -> tuple[nn.Module, float]:
        config = _config(self.dataset, self.model_name, self.seed, epochs, rules, [*self.extra, *extra], self.device)
        seed_everything(config.train.seed)
        model = build_model(config.model).to(resolve_device(self.device))
        started = time.perf_counter()
        Trainer(config, model, self.train_set, self.test_set, self.runs / tag).fit()
        # selection and compaction run on the CPU copy (the graph capture and MAC counts are
        # device-independent); fine-tuning moves the selected model back to the device
        return model.cpu().eval(), time.perf_counter() - started

    def accuracy(self, model: nn.Module) -> float:
        """Full test set, on the training device; the model comes back on the CPU."""
        result = evaluate(model.to(self.train_device), batches(self.test_set, 1000, shuffle=False)).accuracy
        model.cpu()
        return result

    def sizes(self, model: nn.Module) -> dict[str, float]:
        macs = count_macs(model, self.example)
        conv = sum(v for k, v in macs.per_operator.items() if "convolution" in k)
        return {"macs": macs.total / self.dense_macs, "params": count_parameters(model) / self.dense_params,
                "conv_macs": conv / self.dense_conv_macs}  # fmt: skip

    def select_and_recover(self, method: str, budget: float | None, selected: nn.Module, train_s: float,
                           tune: nn.Module | None = None, mask: Any = None, split: tuple[int, int] | None = None,
                           teacher: nn.Module | None = None, **extra: Any) -> None:  # fmt: skip
        """Measure ``selected`` (a compact CPU model), fine-tune ``tune`` (``selected`` itself, or the
        masked model a pruning left) on the training device, and record both. ``split``: the
        (training, recovery) epochs of a row that does not use ``E`` and ``F``; ``teacher``: the
        dense baseline the recovery distills from (``DISTILL`` weight and temperature)."""
        epochs, recover = split or (self.epochs, self.finetune_epochs)
        selected_accuracy = self.accuracy(selected)
        model = (tune if tune is not None else selected).to(self.train_device)
        started = time.perf_counter()
        weight, temperature = DISTILL if teacher is not None else (0.0, 4.0)
        finetune(model, self.train_set, self.test_set, recover, 0.005, batch_size=BATCH_SIZE,
                 momentum=0.9, weight_decay=5e-4, mask=mask, seed=self.seed,
                 teacher=teacher.to(self.train_device) if teacher is not None else None,
                 distill_weight=weight, temperature=temperature)  # fmt: skip
        if teacher is not None:
            teacher.cpu()
            extra = {**extra, "distill": {"weight": weight, "temperature": temperature}}
        tuned = model.cpu().eval()
        if tune is not None:  # a masked model: compact it again (exact, checked) to measure what ships
            tuned = shrinkage.compact(tuned, (self.example,))
        self.record(method, budget, selected_accuracy, tuned, train_s, time.perf_counter() - started,
                    split=(epochs, recover), **extra)  # fmt: skip

    def record(self, method: str, budget: float | None, selected_accuracy: float, final: nn.Module,
               train_s: float, tune_s: float, split: tuple[int, int] | None = None, **extra: Any) -> None:  # fmt: skip
        selected_by_budget = budget is not None or "budget_params" in extra
        if extra.get("ranks"):  # what chose them (the nuclear-ranks rows: the nuclear run's choice)
            extra = {**extra, "rank_criterion": self.criterion.value}
        epochs, recover = split or (self.epochs, self.finetune_epochs)
        row = {"method": method, "budget_macs": budget, "seed": self.seed, "epochs": epochs,
               "finetune_epochs": recover if selected_by_budget else 0,
               "accuracy_selected": selected_accuracy, "accuracy": self.accuracy(final), **self.sizes(final),
               "train_s": round(train_s, 1), "finetune_s": round(tune_s, 1),
               "date": datetime.now(UTC).isoformat(timespec="seconds"), **extra}  # fmt: skip
        log.info("%s %s seed %d budget %s: accuracy %.4f -> %.4f, MACs %.4f, params %.4f", self.dataset,
                 method, self.seed, budget, row["accuracy_selected"], row["accuracy"], row["macs"], row["params"])  # fmt: skip
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row(self.rows)

    def param_rows(self, plain: nn.Module, t_plain: float, nuclear_rule: str, layers: str, suffix: str = "",
                   split: tuple[int, int] | None = None) -> None:  # fmt: skip
        """Rows at a *parameter* budget: plain + SVD / pruning against the nuclear-norm runs,
        each factorized (or pruned) to ``PARAM_BUDGETS`` of the dense model's parameters.
        ``split``: (training, recovery) epochs of every model here (``plain`` included) when
        they are not ``E`` and ``F``; ``suffix`` tells these rows apart."""
        epochs = split[0] if split else self.epochs
        nuclear, t_nuclear = self.train(f"nuclear{suffix}", nuclear_rule, epochs)
        sgl, t_sgl = self.train(f"nuclear_sgl{suffix}", nuclear_rule + _SGL.format(layers=layers), epochs)
        for budget in PARAM_BUDGETS:
            for method, model, t in (("plain+svd", plain, t_plain), ("nuclear", nuclear, t_nuclear),
                                     ("nuclear+sgl", sgl, t_sgl)):  # fmt: skip
                ranks = self.factorized_row(f"{method}@params{suffix}", model, t, budget, split)
                if method == "nuclear" and ranks:  # the plain model at these ranks: training or ranks?
                    same = build_factorized(shrinkage.compact(plain, (self.example,)), ranks)
                    self.select_and_recover(f"plain+svd@nuclear-ranks@params{suffix}", None, same, t_plain,
                                            split=split, ranks=ranks, budget_params=budget)  # fmt: skip
            pruned = shrinkage.prune(plain, self.example, Budget(params=budget))
            self.select_and_recover(f"plain+prune@params{suffix}", None, pruned.compact, t_plain, pruned.model,
                                    pruned.zero_mask(), split=split, budget_params=budget)  # fmt: skip

    def factorized_row(self, method: str, model: nn.Module, train_s: float, budget: float,
                       split: tuple[int, int] | None) -> dict[str, int]:  # fmt: skip
        """Factorize ``model`` to ``budget`` of the dense parameters, recover, record as ``method``;
        the ranks chosen."""
        selected, ranks = self.factorized(model, budget, key="params")
        self.select_and_recover(method, None, selected, train_s, split=split, ranks=ranks, budget_params=budget)
        return ranks

    def long_split(self) -> tuple[int, int]:
        """(training, recovery) epochs of the long rows (``params-long``, ``*-long@conv``): the baseline's total."""
        total = self.epochs + self.finetune_epochs
        train = max(1, round(LONG_TRAIN_SHARE * total))
        if train >= total:
            raise SystemExit(f"long rows: {total} epochs in all leave none for recovery; use more epochs")
        return train, total - train

    # -- methods -------------------------------------------------------------------------
    def factorized(self, model: nn.Module, budget: float, key: str = "macs") -> tuple[nn.Module, dict[str, int]]:
        """Compact first (exact; a sparse group Lasso may have zeroed whole units), then
        choose ranks so the whole model meets ``budget`` of the *dense* model's MACs (or,
        with ``key="params"``, parameters)."""
        small = shrinkage.compact(model, (self.example,))
        if key == "params":
            relative = budget * self.dense_params / count_parameters(small)
        else:
            relative = budget * self.dense_macs / count_macs(small, self.example).total
        if relative >= 1:
            return small, {}
        layers = [n for n in self.layers if any(m == n or m.startswith(n + ".") for m, _ in small.named_modules())]
        ranks = ranks_under_budget(small, Budget(**{key: relative}), (self.example,), layers,
                                   criterion=self.criterion)  # fmt: skip
        return build_factorized(small, ranks), ranks

    def run(self, trainings: frozenset[str] = TRAININGS) -> dict[str, Any]:
        """Train what ``trainings`` names (see ``TRAININGS``) and record its rows."""
        layers = ", ".join(self.layers)
        # the distilled rows' teacher is the baseline: trained even when its row is not redone
        if "baseline" in trainings or trainings & DISTILLED:
            baseline, t_base = self.train("baseline", "", self.epochs + self.finetune_epochs)
        else:  # sizes are the architecture's: an untrained model of the same build counts the same
            seed_everything(self.seed)
            config = _config(self.dataset, self.model_name, self.seed, self.epochs, "", self.extra, self.device)
            baseline, t_base = build_model(config.model).eval(), 0.0
        count = count_macs(baseline, self.example)
        self.dense_macs, self.dense_params = count.total, count_parameters(baseline)
        self.dense_conv_macs = sum(v for k, v in count.per_operator.items() if "convolution" in k)
        # a conv-MAC budget penalizes the convolutions only, as the SSL paper's LeNet runs do: a
        # fully connected neuron saves no conv MAC, and its penalty would only cost accuracy
        convs = ", ".join(n for n in self.layers if isinstance(baseline.get_submodule(n), nn.Conv2d))
        if "baseline" in trainings:
            self.record("baseline", None, self.accuracy(baseline), baseline, t_base, 0.0)
        # the plain model is the start of the after-the-fact rows and of the nuclear run's ranks
        wants_plain = trainings & {"plain", "nuclear", "params"}
        plain, t_plain = self.train("plain", "", self.epochs) if wants_plain else (None, 0.0)
        nuclear_rule = _NUCLEAR.format(layers=layers, strength="1.0e-2", every=PROX_EVERY)
        trained: list[tuple[str, nn.Module, float]] = []
        if plain is not None and "plain" in trainings:
            trained.append(("plain+svd", plain, t_plain))
        if "nuclear" in trainings:
            trained.append(("nuclear", *self.train("nuclear", nuclear_rule, self.epochs)))
        if "nuclear+sgl" in trainings:
            trained.append(("nuclear+sgl", *self.train("nuclear_sgl", nuclear_rule + _SGL.format(layers=layers),
                                                       self.epochs)))  # fmt: skip
        if "params" in trainings:
            assert plain is not None
            self.param_rows(plain, t_plain, nuclear_rule, layers)
        if "params-long" in trainings:
            split = self.long_split()
            short, t_short = self.train("plain-long", "", split[0])
            self.param_rows(short, t_short, nuclear_rule, layers, "-long", split)
        elif "svd-long" in trainings:
            split = self.long_split()
            short, t_short = self.train("plain-long", "", split[0])
            for budget in PARAM_BUDGETS:
                self.factorized_row("plain+svd@params-long", short, t_short, budget, split)
        for budget in BUDGETS:
            for method, model, t in trained:
                selected, ranks = self.factorized(model, budget)
                self.select_and_recover(method, budget, selected, t, ranks=ranks)
                if method == "nuclear" and plain is not None:  # the same ranks on the plain model: training or ranks?
                    same = build_factorized(shrinkage.compact(plain, (self.example,)), ranks)
                    self.select_and_recover("plain+svd@nuclear-ranks", budget, same, t_plain, ranks=ranks)
            if plain is not None and "plain" in trainings:
                pruned = shrinkage.prune(plain, self.example, Budget(macs=budget))
                self.select_and_recover("plain+prune", budget, pruned.compact, t_plain, pruned.model,
                                        pruned.zero_mask())  # fmt: skip
            for training, method, penalize, conv_only, long in (
                ("ssl", "ssl", "all", False, False), ("ssl-focus", "ssl+focus", "weakest", False, False),
                ("ssl-conv", "ssl@conv", "all", True, False), ("ssl-focus-conv", "ssl+focus@conv", "weakest", True, False),
                ("ssl-conv-long", "ssl-long@conv", "all", True, True),
                ("ssl-focus-conv-long", "ssl+focus-long@conv", "weakest", True, True),
                ("ssl-focus-conv-long-kd", "ssl+focus-long-kd@conv", "weakest", True, True),
            ):  # fmt: skip
                if training not in trainings:
                    continue
                split = self.long_split() if long else None
                scope = ("target.macs_of=[Conv2d]",) if conv_only else ()
                ssl, t_ssl = self.train(f"{training}-{budget}", _SSL.format(layers=convs if conv_only else layers),
                                        split[0] if split else self.epochs,
                                        (f"target.macs={budget}", f"target.penalize={penalize}", *scope))  # fmt: skip
                zeroed = _zero_fraction(ssl, self.example, self.dense_macs)
                macs_of = (nn.Conv2d,) if conv_only else None
                pruned = shrinkage.prune(ssl, self.example, Budget(macs=budget, macs_of=macs_of))
                self.select_and_recover(method, budget, pruned.compact, t_ssl, pruned.model, pruned.zero_mask(),
                                        split=split, teacher=baseline if training in DISTILLED else None,
                                        macs_zeroed_by_training=zeroed)  # fmt: skip
        return {"dataset": self.dataset, "model": self.model_name, "seed": self.seed, "rows": self.rows}


def _zero_fraction(model: nn.Module, example: torch.Tensor, dense: int) -> float:
    """MAC fraction of the model compaction alone leaves (what training zeroed)."""
    return count_macs(shrinkage.compact(model, (example,)), example).total / dense


def _meta(command: str, device: str) -> dict[str, Any]:
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") and torch.cuda.is_available() else None
    return {"benchmark": "budget_results", "command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "gpu": gpu},
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device}  # fmt: skip


def merge_rows(recorded: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``recorded`` with each row of ``new`` in place of the one with its method, budget and
    rank criterion (appended where there was none), so a file stays whole while a rerun is
    under way, and a rerun with another criterion adds its rows beside the recorded ones."""
    key = lambda r: (r["method"], r["budget_macs"], r.get("rank_criterion"))  # noqa: E731
    fresh = {key(r): r for r in new}
    merged = [fresh.pop(key(r), r) for r in recorded]
    return merged + list(fresh.values())


def recorded_for_rerun(path: Path, head: dict[str, Any]) -> dict[str, Any]:
    """The complete result a rerun redoes part of, recorded with the same settings."""
    if not path.is_file():
        raise SystemExit(f"--rerun: {path} does not exist; run without --rerun first")
    recorded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    for field in ("epochs", "finetune_epochs", "limit_train", "device"):
        if recorded.get(field) != head[field]:
            raise SystemExit(f"--rerun: {path} was recorded with {field}={recorded.get(field)!r}, "
                             f"this run has {head[field]!r}; a rerun must use the same settings")  # fmt: skip
    if not recorded.get("complete"):
        raise SystemExit(f"--rerun: {path} is incomplete; finish it first (run without --rerun)")
    return recorded


def _one(key: str, args: argparse.Namespace) -> Path:
    dataset, model, seed = key.split(":")
    bench = Bench(dataset, model, int(seed), args.epochs, args.finetune_epochs, args.device, args.runs_dir,
                  args.limit_train, RankCriterion(args.rank_criterion))  # fmt: skip
    path = args.out / f"{dataset}-{model}-seed{seed}.json"
    words = ["python", "benchmarks/budget_results.py", "--only", key, "--epochs", str(args.epochs),
             "--finetune-epochs", str(args.finetune_epochs), "--device", args.device]  # fmt: skip
    if args.limit_train:
        words += ["--limit-train", str(args.limit_train)]
    if args.rerun:
        words += ["--rerun", *args.rerun]
    if args.rank_criterion != RankCriterion.LOG_KEPT.value:
        words += ["--rank-criterion", args.rank_criterion]
    head = {**_meta(" ".join(words), args.device), "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
            "limit_train": args.limit_train, "dataset": dataset, "model": model, "seed": int(seed)}  # fmt: skip
    if not args.rerun:
        bench.on_row = lambda rows: write_json(path, {**head, "complete": False, "rows": rows})
        result = bench.run()
        write_json(path, {**head, "complete": True, **result})
        return path
    # a rerun keeps the file's first command and date, adds its own to "reruns", and dates each row
    recorded = recorded_for_rerun(path, head)
    rerun = {"command": head["command"], "date": head["date"], "trainings": sorted(args.rerun)}
    updated = {**recorded, "reruns": [*recorded.get("reruns", []), rerun]}
    bench.on_row = lambda rows: write_json(path, {**updated, "rows": merge_rows(recorded["rows"], rows)})
    bench.run(frozenset(args.rerun))
    return path


def _parallel(keys: list[str], args: argparse.Namespace, argv: list[str]) -> None:
    """One process per key (each single-threaded on the CPU side), at most ``--jobs`` at once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pending, running = list(keys), []
    while pending or running:
        while pending and len(running) < args.jobs:
            key = pending.pop(0)
            log_path = args.runs_dir / f"{key.replace(':', '-')}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, __file__, *argv, "--only", key]
            running.append((key, subprocess.Popen(cmd, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)))
        time.sleep(2)
        for key, proc in list(running):
            if proc.poll() is not None:
                running.remove((key, proc))
                print(f"{key}: {'done' if proc.returncode == 0 else f'FAILED ({proc.returncode})'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="dataset:model:seed keys (default: all)")
    parser.add_argument("--epochs", type=int, default=6, help="regularized / plain epochs (E)")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs after selection (F)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="processes at once when running several keys")
    parser.add_argument("--limit-train", type=int, help="smoke test only: train on the first N images")
    parser.add_argument("--rerun", nargs="+", choices=sorted(TRAININGS),
                        help="redo only these trainings and their rows in the recorded results of each key; "
                             "the other rows stay as recorded")  # fmt: skip
    parser.add_argument("--rank-criterion", choices=[c.value for c in RankCriterion], default=RankCriterion.LOG_KEPT.value,
                        help="what the choice of ranks under a budget minimizes (shrinkage.RankCriterion)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "budget")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    keys = args.only or [f"{d}:{m}:{s}" for (d, m) in SETUPS for s in SEEDS]
    if len(keys) == 1:
        torch.set_num_threads(1 if os.environ.get("OMP_NUM_THREADS") == "1" else torch.get_num_threads())
        print(_one(keys[0], args))
        return
    argv = [a for a in sys.argv[1:] if a not in ("--only", *(args.only or []))]
    _parallel(keys, args, argv)


if __name__ == "__main__":
    main()
