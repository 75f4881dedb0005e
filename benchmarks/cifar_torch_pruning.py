"""Torch-Pruning rows of the CIFAR-10 (JPEG copy) ResNet-20 comparison.

    pip install -c constraints.txt -e ".[bench]"
    python benchmarks/cifar_torch_pruning.py --run runs/cifar/baseline-s0 --macs 0.5 \\
        --method magnitude --method group_norm --finetune-epochs 2
    python benchmarks/cifar_torch_pruning.py --run results/cifar10/models/baseline-s1.safetensors \\
        --config configs/cifar10_resnet20_baseline.yaml --set train.seed=1 --macs 0.5 --method group_norm

The trained dense ResNet-20 of a ``shrinkage train`` run directory is pruned with
Torch-Pruning (TP) to a fraction of its MACs, fine-tuned with exactly the recipe of
``shrinkage compress RUN_DIR --target macs=M --finetune-epochs E`` and measured like
shrinkage's own rows:

* methods: ``magnitude`` (TP's MagnitudePruner, L1 magnitude importance) and
  ``group_norm`` (TP's GroupNormPruner, GroupMagnitudeImportance, L2); both rank
  globally and leave the classifier (``fc``) alone;
* MAC target: TP's progressive pruning (``pruning_ratio=1.0`` spread over
  ``--steps`` iterative steps, importance recomputed at every step) stops at the first
  step whose MACs, counted by ``shrinkage.metrics.count_macs`` like every other row,
  are at or below the target. When that point lies more than 2% below the target,
  pruning is redone with twice as many (finer) steps, up to twice; what remains is the
  nearest point below the target TP reached, and ``achieved.within_band`` says so.
  TP's own count (``tp.utils.count_ops_and_params``) is recorded beside it;
* fine-tuning: ``shrinkage.train.recover.finetune`` with the run's batch size,
  momentum, weight decay, seed and augmentation, cosine schedule, lr ``--lr`` else the
  run's fine-tuning lr else its training lr (the same fallbacks as ``compress``). TP's
  model is already narrow, so no mask is needed: SGD with momentum and weight decay on
  the kept weights is the same computation as compress's masked full-width model;
* accuracy on the whole test split before and after fine-tuning
  (``shrinkage.metrics.evaluate``); latency at batch 1 and 64 against the dense model
  side by side (``compare_latency``, interleaved, with its identical-copy control);
  wall times: ``time_s.prune`` is the whole search (every attempt, TP's steps plus a
  MAC count after each), ``torch_pruning.attempts[].tp_step_s`` TP's steps alone;
  ``time_s.finetune`` the recovery epochs with their test-set evaluations.

``--sparse-training`` (group_norm only) is TP's sparsity-learning mode: a fresh
ResNet-20 is trained with ``GroupNormPruner.regularize()`` added to the gradients
before every SGD step, for the epochs and schedule of ``--sparse-config`` (the
regularized shrinkage rows' config: 18 epochs, then its ``target.finetune_epochs`` at its
``target.finetune_lr``), then pruned and fine-tuned as above. It trains in eager mode
(the shrinkage rows use ``train.compile``: the same arithmetic up to float round-off).

Output, per method and target: ``<out>/torch_pruning-<method>[-sl]-macs<m>-s<seed>.json``
and, beside it, the pruned model as ``.safetensors`` written by ``shrinkage.save``
(rebuild it with ``shrinkage.load(path, resnet20())``; the script checks the round trip
and records its largest output difference). Should that round trip fail, the weights go
to ``.state.safetensors`` with TP's pruning history in ``.tp_history.json``, which
rebuilds the architecture on a fresh ResNet-20 through
``tp.DependencyGraph().build_dependency(model, x).load_pruning_history(history)``.
``complete`` is true only for a full-size run that got through every step.
``--quick`` is a smoke run on small subsets (it needs ``--out``, so no smoke numbers land
in results/).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import importlib.metadata
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import shrinkage
from shrinkage.config import RunConfig, ScheduleConfig, load_config
from shrinkage.data import ImageDataset, batches, get_dataset_spec
from shrinkage.data.cifar_jpeg import CIFAR10_JPEG_TITLE
from shrinkage.errors import ConfigError, ShrinkageError
from shrinkage.io import write_json
from shrinkage.metrics import compare_latency, count_macs, count_parameters, evaluate
from shrinkage.train.pipeline import load_source
from shrinkage.train.recover import finetune
from shrinkage.train.setup import build_model, load_datasets, seed_everything

log = logging.getLogger("cifar_torch_pruning")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "results" / "cifar10"
DEFAULT_SPARSE_CONFIG = ROOT / "configs" / "cifar10_resnet20_ssl_width.yaml"
#: achieved MACs may lie at most this far below the target (relative), as shrinkage's own selection
BAND = 0.02
#: times the step count is doubled when a step jumps past the band
REFINEMENTS = 2
#: TP's CIFAR benchmark uses this group-regularization strength for sparsity learning
DEFAULT_REG = 5e-4
QUICK_TRAIN, QUICK_TEST = 512, 500


class BenchmarkError(ShrinkageError):
    """The benchmark cannot produce a row (e.g. TP cannot reach the MAC target)."""


@dataclass(frozen=True)
class TpMethod:
    """A TP pruner class with its importance, ranked globally."""

    name: str
    pruner: type
    importance: Callable[[], Any]
    describe: dict[str, Any]

    def build(self, model: nn.Module, example: Tensor, steps: int, reg: float) -> Any:
        kwargs: dict[str, Any] = {"reg": reg} if self.pruner is tp.pruner.GroupNormPruner else {}
        was_training = model.training
        model.eval()  # TP traces with a forward pass: in train mode it would shift the BatchNorm statistics
        try:
            return self.pruner(model, example, importance=self.importance(), global_pruning=True,
                               pruning_ratio=1.0, iterative_steps=steps, ignored_layers=[_classifier(model)],
                               **kwargs)  # fmt: skip
        finally:
            model.train(was_training)


METHODS = {
    "magnitude": TpMethod("magnitude", tp.pruner.MagnitudePruner, lambda: tp.importance.MagnitudeImportance(p=1),
                          {"pruner": "MagnitudePruner", "importance": "MagnitudeImportance(p=1)"}),
    "group_norm": TpMethod("group_norm", tp.pruner.GroupNormPruner,
                           lambda: tp.importance.GroupMagnitudeImportance(p=2),
                           {"pruner": "GroupNormPruner", "importance": "GroupMagnitudeImportance(p=2)"}),
}  # fmt: skip


def _classifier(model: nn.Module) -> nn.Module:
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise ConfigError(f"{type(model).__name__}: no Linear 'fc' classifier to leave unpruned")
    return fc


@dataclass(frozen=True)
class Recipe:
    """SGD fine-tuning (or training) settings, as ``shrinkage.train.recover.finetune`` takes them."""

    epochs: int
    lr: float
    batch_size: int
    test_batch_size: int
    momentum: float
    weight_decay: float
    seed: int
    schedule: ScheduleConfig | None = None  # None: finetune's default, cosine over the epochs

    def run(self, model: nn.Module, train: ImageDataset, test: ImageDataset, augment: Any) -> list[dict[str, Any]]:
        return finetune(model, train, test, self.epochs, self.lr, batch_size=self.batch_size,
                        test_batch_size=self.test_batch_size, momentum=self.momentum,
                        weight_decay=self.weight_decay, seed=self.seed, schedule=self.schedule,
                        augment=augment)  # fmt: skip

    def summary(self) -> dict[str, Any]:
        schedule = "cosine (finetune default)" if self.schedule is None else dataclasses.asdict(self.schedule)
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "schedule"}, "schedule": schedule}


def compress_recipe(config: RunConfig, epochs: int, lr: float | None) -> Recipe:
    """What ``shrinkage compress`` fine-tunes with (see train/compress.py): same lr fallbacks."""
    if config.train.nesterov:
        raise ConfigError("train.nesterov: recover.finetune has no Nesterov momentum; this comparison needs plain SGD")
    lr = lr or config.finetune.lr or config.train.lr
    return Recipe(epochs, lr, config.data.batch_size, config.data.test_batch_size, config.train.momentum,
                  config.train.weight_decay, config.train.seed)  # fmt: skip


@dataclass(frozen=True)
class Pruned:
    model: nn.Module
    macs: int
    iterative_steps: int
    steps_taken: int
    attempts: list[dict[str, Any]]
    history: list[Any]


def prune_to_macs(dense: nn.Module, example: Tensor, target: float, method: TpMethod, steps: int,
                  reg: float) -> Pruned:  # fmt: skip
    """TP's progressive pruning of a copy of ``dense`` down to ``target`` of its MACs."""
    dense_macs = count_macs(dense, (example,)).total
    limit = target * dense_macs
    attempts: list[dict[str, Any]] = []
    best: Pruned | None = None
    for attempt in range(REFINEMENTS + 1):
        n = steps * 2**attempt
        model = copy.deepcopy(dense).eval()
        pruner = method.build(model, example, n, reg)
        macs, taken, stepping = dense_macs, 0, 0.0
        while macs > limit and taken < n:
            clock = time.perf_counter()
            pruner.step()
            stepping += time.perf_counter() - clock
            taken += 1
            macs = count_macs(model, (example,)).total
        attempts.append({"iterative_steps": n, "steps_taken": taken, "macs": macs / dense_macs,
                         "tp_step_s": round(stepping, 3)})  # fmt: skip
        log.info("%s: %d of %d steps -> %.4f of the dense MACs", method.name, taken, n, macs / dense_macs)
        if macs > limit:
            raise BenchmarkError(f"--macs {target:g}: {method.name} stops at {macs / dense_macs:.4f} of the MACs "
                                 f"after all {n} steps")  # fmt: skip
        candidate = Pruned(model, macs, n, taken, attempts, pruner.pruning_history())
        if best is None or macs > best.macs:
            best = candidate
        if macs >= (1 - BAND) * limit:
            break
    assert best is not None
    return dataclasses.replace(best, attempts=attempts)


@contextmanager
def regularized_steps(model: nn.Module, pruner: Any) -> Iterator[None]:
    """Add TP's group regularization to ``model``'s gradients right before every SGD step.

    ``finetune`` owns its optimizer and loop; a step pre-hook is where TP's sparsity
    learning puts ``regularize()`` (after backward, before the step) without a second
    training loop. The hook acts only on an optimizer over this model's parameters.
    """
    first = next(model.parameters())

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if any(p is first for group in optimizer.param_groups for p in group["params"]):
            pruner.regularize(model)

    pruner.update_regularizer()
    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def sparse_train(config: RunConfig, seed: int, train: ImageDataset, test: ImageDataset, example: Tensor,
                 reg: float, epochs: int | None) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """A fresh model trained with GroupNormPruner.regularize() on ``config``'s schedule."""
    started = time.perf_counter()
    seed_everything(seed)
    model = build_model(config.model).to(example.device)
    pruner = METHODS["group_norm"].build(model, example, 1, reg)
    recipe = dataclasses.replace(compress_recipe(config, epochs or config.train.epochs, config.train.lr),
                                 seed=seed, schedule=config.train.lr_schedule)  # fmt: skip
    with regularized_steps(model, pruner):
        rows = recipe.run(model, train, test, get_dataset_spec(config.data.name).train_augment)
    model.eval()
    return model, {"config": config.name, "reg": reg, "recipe": recipe.summary(), "rows": rows,
                   "compiled": False, "time_s": round(time.perf_counter() - started, 3)}  # fmt: skip


def _accuracy(model: nn.Module, test: ImageDataset, batch_size: int) -> float:
    return evaluate(model, batches(test, batch_size, shuffle=False)).accuracy


def _tp_count(model: nn.Module, example: Tensor) -> dict[str, int]:
    macs, params = tp.utils.count_ops_and_params(model, example_inputs=example)
    return {"macs_per_image": int(macs), "params": int(params)}


def _widths(model: nn.Module) -> dict[str, int]:
    return {name: int(m.out_channels) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def save_model(model: nn.Module, rebuild: Callable[[], nn.Module], history: list[Any], path: Path,
               example: Tensor) -> dict[str, Any]:  # fmt: skip
    """``shrinkage.save`` and a check that ``shrinkage.load`` gives the same outputs back;
    else the fallback documented at the top of this file."""
    try:
        shrinkage.save(model, path)
        again = shrinkage.load(path, rebuild()).eval()
        with torch.inference_mode():
            diff = float((again(example) - model.eval()(example)).abs().max())
        if diff == 0.0:
            return {"model": path.name, "format": "shrinkage.save", "load": "shrinkage.load(path, resnet20())",
                    "roundtrip_max_abs_diff": diff}  # fmt: skip
        reason = f"outputs differ by {diff:.3g} after shrinkage.load"
    except ShrinkageError as error:
        reason = f"{type(error).__name__}: {error}"
    log.warning("shrinkage.save/load does not round-trip the pruned model (%s); saving the fallback", reason)
    path.unlink(missing_ok=True)
    state = path.with_suffix(".state.safetensors")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(state))
    history_file = path.with_suffix(".tp_history.json")
    history_file.write_text(json.dumps(history), encoding="utf-8")
    return {"model": state.name, "format": "state dict + TP pruning history", "history": history_file.name,
            "shrinkage_save_failed": reason}  # fmt: skip


@dataclass(frozen=True)
class Setting:
    """What one invocation shares across its rows."""

    run_dir: Path
    out: Path
    quick: bool
    steps: int
    reg: float
    finetune_epochs: int | None
    lr: float | None
    sparse_config: Path | None
    command: str


def row_stem(method: str, sparse: bool, macs: float, seed: int) -> str:
    return f"torch_pruning-{method}{'-sl' if sparse else ''}-macs{macs:g}-s{seed}"


def one_row(setting: Setting, method: TpMethod, target: float, dense: nn.Module, config: RunConfig,
            train: ImageDataset, test: ImageDataset) -> dict[str, Any]:  # fmt: skip
    """Prune (optionally after sparse training), fine-tune, measure, save; returns the JSON."""
    started = time.perf_counter()
    seed = config.train.seed
    example = test.images[:1].clone()
    augment = get_dataset_spec(config.data.name).train_augment
    stem = row_stem(method.name, setting.sparse_config is not None, target, seed)
    result: dict[str, Any] = {
        "benchmark": "cifar_torch_pruning", "command": setting.command, "complete": False, "quick": setting.quick,
        "dataset": CIFAR10_JPEG_TITLE, "model": config.model.name, "run": str(setting.run_dir), "seed": seed,
        "method": method.name, "target": {"macs": target},
        "torch_pruning": {"version": importlib.metadata.version("torch-pruning"),
                          "module_version": tp.__version__, **method.describe, "global_pruning": True,
                          "pruning_ratio": 1.0, "ignored_layers": ["fc"]},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    times: dict[str, float] = {}
    accuracy: dict[str, Any] = {"n": len(test), "dense": _accuracy(dense, test, config.data.test_batch_size)}
    source, recipe = dense, compress_recipe(config, setting.finetune_epochs or 2, setting.lr)
    if setting.sparse_config is not None:
        sparse = _sparse_config(setting.sparse_config, config)
        epochs = 1 if setting.quick else None
        source, result["sparse_training"] = sparse_train(sparse, seed, train, test, example, setting.reg, epochs)
        times["sparse_training"] = result["sparse_training"]["time_s"]
        accuracy["sparse_trained"] = _accuracy(source, test, config.data.test_batch_size)
        target_cfg = sparse.target
        epochs_ft = setting.finetune_epochs or (target_cfg.finetune_epochs if target_cfg else 2)
        lr = setting.lr or (target_cfg.finetune_lr if target_cfg else None)
        recipe = dataclasses.replace(compress_recipe(sparse, epochs_ft, lr), seed=seed)
    clock = time.perf_counter()
    pruned = prune_to_macs(source, example, target, method, setting.steps, setting.reg)
    times["prune"] = round(time.perf_counter() - clock, 3)
    dense_macs = count_macs(dense, (example,)).total
    dense_params, pruned_params = count_parameters(dense), count_parameters(pruned.model)
    achieved = pruned.macs / dense_macs
    result["torch_pruning"].update(iterative_steps=pruned.iterative_steps, steps_taken=pruned.steps_taken,
                                   pruning_ratio_reached=pruned.steps_taken / pruned.iterative_steps,
                                   attempts=pruned.attempts,
                                   **({"reg": setting.reg} if method.name == "group_norm" else {}))  # fmt: skip
    result["achieved"] = {"macs": achieved, "params": pruned_params / dense_params, "below_target": achieved <= target,
                          "within_band": (1 - BAND) * target <= achieved <= target, "band": BAND}  # fmt: skip
    result["size"] = {
        "dense": {"macs_per_image": dense_macs, "params": dense_params},
        "pruned": {"macs_per_image": pruned.macs, "params": pruned_params},
        "torch_pruning_count": {"dense": _tp_count(dense, example), "pruned": _tp_count(pruned.model, example)},
    }
    tp_counts = result["size"]["torch_pruning_count"]
    result["achieved"]["macs_torch_pruning_count"] = (
        tp_counts["pruned"]["macs_per_image"] / tp_counts["dense"]["macs_per_image"]
    )
    result["widths"] = _widths(pruned.model)
    accuracy["pruned"] = _accuracy(pruned.model, test, config.data.test_batch_size)
    result["accuracy"], result["time_s"] = accuracy, times
    _write(setting.out / f"{stem}.json", result)  # a record of the pruning even if fine-tuning is interrupted
    clock = time.perf_counter()
    rows = recipe.run(pruned.model, train, test, augment)
    times["finetune"] = round(time.perf_counter() - clock, 3)
    accuracy["finetuned"] = _accuracy(pruned.model, test, config.data.test_batch_size)
    result["finetune"] = {**recipe.summary(), "augment": getattr(augment, "__name__", None), "rows": rows,
                          "same_as": "shrinkage compress --finetune-epochs (train/compress.py)"}  # fmt: skip
    result["latency"] = _latency(dense, pruned.model, test, config, setting.quick)
    result["files"] = save_model(pruned.model, lambda: build_model(config.model), pruned.history,
                                 setting.out / f"{stem}.safetensors", test.images[:8].clone())  # fmt: skip
    times["total"] = round(time.perf_counter() - started, 3)
    result["complete"] = not setting.quick
    _write(setting.out / f"{stem}.json", result)
    return result


def _sparse_config(path: Path, run: RunConfig) -> RunConfig:
    config = load_config(path)
    for key in ("model", "data"):
        if getattr(config, key).name != getattr(run, key).name:
            raise ConfigError(f"--sparse-config {path}: {key}.name is {getattr(config, key).name}, "
                              f"but the run's is {getattr(run, key).name}")  # fmt: skip
    # trained on the run's data (passed in) with the run's seed: one sparse row per baseline seed
    return dataclasses.replace(config, train=dataclasses.replace(config.train, seed=run.train.seed))


def _latency(dense: nn.Module, pruned: nn.Module, test: ImageDataset, config: RunConfig,
             quick: bool) -> list[dict[str, Any]]:  # fmt: skip
    repeats, min_run_time = (1, 0.05) if quick else (config.report.repeats, 0.3)
    images = test.images

    def make_input(batch_size: int) -> Tensor:
        return images[:batch_size].clone()

    comparisons = compare_latency({"dense": dense, "torch_pruning": pruned}, make_input, (1, 64), repeats,
                                  min_run_time)  # fmt: skip
    return [c.as_dict() for c in comparisons]


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    log.info("wrote %s", path)


def _subset(data: ImageDataset, n: int) -> ImageDataset:
    """Every k-th sample: the splits are stored class by class, so the first ``n`` hold one class."""
    if len(data) <= n:
        return data
    step = len(data) // n
    return ImageDataset(data.images[::step][:n], data.labels[::step][:n], data.num_classes, f"{data.name}[::{step}]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True,
                        help="a finished 'shrinkage train' run directory, or a model file written by "
                        "shrinkage.save (with --config)")
    parser.add_argument("--config", type=Path, help="with a model file: the config it was trained with")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="with --config: override a config value, e.g. --set train.seed=1 (repeatable)")
    parser.add_argument(
        "--macs",
        type=float,
        action="append",
        required=True,
        help="MAC target, a fraction of the dense model's (repeatable)",
    )
    parser.add_argument(
        "--method", choices=sorted(METHODS), action="append", required=True, help="TP pruner (repeatable)"
    )
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=None,
        help="recovery epochs (default 2; with --sparse-training the sparse config's)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="recovery lr (default as shrinkage compress: the run's fine-tuning, else training, lr)",
    )
    parser.add_argument("--steps", type=int, default=400, help="TP iterative steps for pruning_ratio 1.0")
    parser.add_argument(
        "--sparse-training",
        action="store_true",
        help="train from scratch with GroupNormPruner.regularize() first (group_norm only)",
    )
    parser.add_argument(
        "--sparse-config",
        type=Path,
        default=DEFAULT_SPARSE_CONFIG,
        help="schedule of the sparse training and its recovery",
    )
    parser.add_argument("--reg", type=float, default=DEFAULT_REG, help="GroupNormPruner regularization strength")
    parser.add_argument("--out", type=Path, default=None, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help="smoke run on small subsets (needs --out)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    for m in args.macs:
        if not (math.isfinite(m) and 0 < m < 1):
            raise ConfigError(f"--macs {m}: must be a fraction in (0, 1)")
    if args.quick and args.out is None:
        raise ConfigError("--quick: give --out (smoke numbers stay out of results/)")
    if args.sparse_training and set(args.method) != {"group_norm"}:
        raise ConfigError("--sparse-training: only --method group_norm has a regularizer (MagnitudePruner has none)")
    if args.steps < 1 or (args.finetune_epochs is not None and args.finetune_epochs < 0):
        raise ConfigError("--steps must be >= 1 and --finetune-epochs >= 0")
    if args.reg <= 0 or (args.lr is not None and args.lr <= 0):
        raise ConfigError("--reg and --lr must be > 0")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # its per-batch-size INFO line cannot be formatted (an unset round count goes to %d); the
    # timings are in the JSON, its warnings (an unreliable control) still show
    logging.getLogger("shrinkage.metrics.latency").setLevel(logging.WARNING)
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/cifar_torch_pruning.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        check_args(args)
        run = load_source(args.run, args.config, args.overrides)
        config = run.config
        if args.quick:  # a class-balanced subset, not the run's data.limit_train (the first n: one class)
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, limit_train=None))
        train, test = load_datasets(config, next(run.model.parameters()).device)
        if args.quick:
            train, test = _subset(train, QUICK_TRAIN), _subset(test, QUICK_TEST)
        setting = Setting(args.run, args.out or DEFAULT_OUT, args.quick, args.steps, args.reg, args.finetune_epochs,
                          args.lr, args.sparse_config if args.sparse_training else None, command)  # fmt: skip
        for name in dict.fromkeys(args.method):
            for target in dict.fromkeys(args.macs):
                result = one_row(setting, METHODS[name], target, run.model.eval(), config, train, test)
                acc = result["accuracy"]
                print(f"{name} macs {target:g}: achieved {result['achieved']['macs']:.4f}, accuracy dense "
                      f"{acc['dense']:.4f} pruned {acc['pruned']:.4f} fine-tuned {acc['finetuned']:.4f}")  # fmt: skip
    except ShrinkageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
