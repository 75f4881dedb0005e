"""Cut a trained model down to a budget, fine-tune it, save it with its results.

``shrinkage compress RUN_DIR --target macs=0.25`` writes into a new directory;
``shrinkage train`` with a ``target:`` block writes into the run directory. Both go
through :func:`compress`: accuracy of the dense model; selection under the budget;
accuracy right after; recovery fine-tuning (:mod:`shrinkage.train.recover`); the final
model measured against the budget, its accuracy, and everything saved (``config.yaml``,
``target.safetensors``, ``target.json``, ``target.md``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import shrinkage
from shrinkage.budget import Achieved, Budget, Importance, RankCriterion, Taylor
from shrinkage.budget.importance import DEFAULT_BATCHES
from shrinkage.config import (
    NuclearNormConfig,
    PruneImportance,
    RegularizationConfig,
    RunConfig,
    SelectionMethod,
    TargetConfig,
    default_selection,
    load_config,
    resolve_rule,
    to_dict,
)
from shrinkage.data import ImageDataset, batches, get_dataset_spec
from shrinkage.errors import ConfigError
from shrinkage.io import reporting_write_errors, write_json, write_text, write_yaml
from shrinkage.metrics import count_macs, count_parameters, evaluate, measure_latency
from shrinkage.optim import ZeroMask
from shrinkage.train.compaction import example_inputs
from shrinkage.train.pipeline import CONFIG, RERUN_MAY_CHANGE, load_run, load_source, source_config
from shrinkage.train.recalibrate import recalibrate_batchnorm
from shrinkage.train.recover import finetune
from shrinkage.train.report import TARGET_JSON, TARGET_MD, TARGET_WEIGHTS, target_markdown
from shrinkage.train.setup import load_datasets
from shrinkage.train.trainer import first_difference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selected:
    """The model fine-tuning trains, the mask holding its removed weights, what was chosen."""

    model: nn.Module
    mask: ZeroMask | None
    details: dict[str, Any]


@dataclass(frozen=True)
class Pruning:
    """Coupled channels / heads / branches under the budget; kept widths multiples of ``round_to``;
    damage estimated by ``importance`` (None: group norms)."""

    round_to: int = 1
    importance: Importance | None = None

    def select(self, dense: nn.Module, example: Tensor, budget: Budget) -> Selected:
        result = shrinkage.prune(dense, (example,), budget, round_to=self.round_to, importance=self.importance)
        return Selected(result.model, result.zero_mask(), {"round_to": self.round_to, **result.summary()})

    def finish(self, model: nn.Module, example: Tensor) -> nn.Module:
        # fine-tuned with its zeros held: compact() removes them and checks the outputs are equal;
        # at the widths the selection measured (zero channels kept where rounding needs them)
        return shrinkage.compact(model.eval(), (example,), shrinkage.CompactOptions(round_to=self.round_to))


@dataclass(frozen=True)
class Factorization:
    """Ranks under the budget for the layers matching ``layers`` (None: every Conv2d/Linear),
    chosen by ``criterion``."""

    layers: tuple[str, ...] | None = None
    criterion: RankCriterion = RankCriterion.LOG_KEPT

    def select(self, dense: nn.Module, example: Tensor, budget: Budget) -> Selected:
        # exact compaction first: zeros a sparse penalty left go for free, and the ranks
        # only need to make up the rest (the budget is rescaled to the compact model)
        compact = shrinkage.compact(dense, (example,))
        rest = _rescaled(budget, dense, compact, example)
        model = compact if rest is None else shrinkage.factorize(
            compact, budget=rest, example_inputs=example, layers=self.layers, criterion=self.criterion)
        ranks = {name: int(m.project.weight.shape[0]) for name, m in model.named_modules()
                 if isinstance(m, nn.Sequential) and hasattr(m, "project") and hasattr(m, "expand")}  # fmt: skip
        return Selected(model, None, {"layers": list(self.layers or ["all Conv2d/Linear"]), "ranks": ranks,
                                      "rank_criterion": self.criterion.value})  # fmt: skip

    def finish(self, model: nn.Module, example: Tensor) -> nn.Module:
        return model.eval()  # the pairs were fine-tuned as they are


def _rescaled(budget: Budget, dense: nn.Module, compact: nn.Module, example: Tensor) -> Budget | None:
    """``budget`` (fractions of ``dense``) as fractions of ``compact``; None if ``compact`` meets it."""
    budget = budget.pinned_to(dense)
    layers = budget.mac_layers(dense)
    dense_macs = count_macs(dense, (example,), layers).total
    compact_macs = count_macs(compact, (example,), layers).total

    def part(target: float | None, of_dense: float, of_compact: float) -> float | None:
        return None if target is None or target * of_dense >= of_compact else target * of_dense / of_compact

    macs = part(budget.macs, dense_macs, compact_macs)
    params = part(budget.params, count_parameters(dense), count_parameters(compact))
    if macs is None and params is None and budget.latency_ms is None:
        return None
    return Budget(macs=macs, params=params, latency_ms=budget.latency_ms, batch_size=budget.batch_size,
                  macs_in=budget.macs_in if macs is not None else None)  # fmt: skip


def calibration_batches(
    train: ImageDataset, batch_size: int, seed: int, count: int = DEFAULT_BATCHES
) -> list[tuple[Tensor, Tensor]]:
    """The first ``count`` (default :data:`~shrinkage.budget.importance.DEFAULT_BATCHES`) batches
    of a seeded shuffle of ``train``, without augmentation: what the Taylor importance
    measures the loss on, and what BatchNorm statistics are re-estimated from."""
    generator = torch.Generator().manual_seed(seed)
    return list(itertools.islice(batches(train, batch_size, shuffle=True, generator=generator), count))


def selection_for(config: RunConfig, dense: nn.Module, method: SelectionMethod, image_shape: tuple[int, ...],
                  train: ImageDataset | None = None) -> Pruning | Factorization:  # fmt: skip
    """The selection of ``method`` with this run's settings: ``target.round_to`` and
    ``target.importance`` (measured on ``train``; group norms without it) for pruning;
    for factorization ``target.rank_criterion`` and ``compact.factorize_layers``, else the
    layers the nuclear-norm rules selected, else every Conv2d/Linear."""
    if method is SelectionMethod.PRUNE:
        target = config.target or TargetConfig(macs=1.0)
        importance: Importance | None = None
        if target.importance is PruneImportance.TAYLOR and train is not None:
            importance = Taylor(calibration_batches(train, config.data.batch_size, config.train.seed))
        return Pruning(target.round_to, importance)
    layers = config.compact.factorize_layers or _nuclear_layers(config.regularization, dense, image_shape)
    criterion = config.target.rank_criterion if config.target is not None else RankCriterion.LOG_KEPT
    return Factorization(tuple(layers) or None, criterion)


def _nuclear_layers(regularization: RegularizationConfig, model: nn.Module,
                    image_shape: tuple[int, ...]) -> tuple[str, ...]:  # fmt: skip
    names = [name for rule in regularization.rules if isinstance(rule.penalty, NuclearNormConfig)
             for resolved in resolve_rule(rule, (1, *image_shape))
             for name, m in resolved.chosen(model) if isinstance(m, (nn.Conv2d, nn.Linear))]  # fmt: skip
    return tuple(dict.fromkeys(names))


def default_out_dir(run_dir: str | Path, budget: Budget) -> Path:
    """``<run_dir>-<targets>``, e.g. ``runs/lenet_baseline-macs0.25``."""
    run = Path(run_dir)
    if run.is_file():  # a saved model: results/models/baseline.safetensors -> results/models/baseline-macs0.5
        run = run.with_suffix("")
    if not run.name:  # "." or "/": name the directory after where it really is
        run = run.resolve()
    parts = [f"{key}{value:g}" for key, value in budget.targets().items()]
    if budget.macs_of is not None:  # runs/x-macs0.1-of-Conv2d: another budget than runs/x-macs0.1
        parts.insert(1, "of-" + "+".join(t.__name__ for t in budget.macs_of))
    if budget.latency_ms is not None and budget.batch_size != 1:
        parts.append(f"batch{budget.batch_size}")
    return run.with_name(f"{run.name}-{'-'.join(parts)}")


def _settings(config: RunConfig, method: SelectionMethod | None, baseline: str | Path | None,
              source: str | Path | None) -> dict[str, Any]:  # fmt: skip
    """What a result depends on besides the config (kept in ``target.json``)."""
    return {"source": str(source) if source is not None else None,
            "method": (method or default_selection(config.regularization)).value,
            "method_from": "override" if method else "regularization",
            "baseline": str(baseline) if baseline is not None else None}  # fmt: skip


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    # the baseline may be named by another relative path to the same directory
    baseline = settings.get("baseline")
    return {"method": settings.get("method"), "baseline": str(Path(baseline).resolve()) if baseline else None}


def refuse_other_settings(out_dir: Path, config: RunConfig, settings: dict[str, Any]) -> None:
    """Raise unless ``out_dir`` is absent, empty, or holds results of these very settings.

    Results of the same settings are redone in place (the selection and fine-tuning are
    deterministic); anything else would mix two experiments in one directory.
    """
    with reporting_write_errors("output directory", out_dir):
        if not out_dir.exists():
            return
        if not out_dir.is_dir():
            raise ConfigError(f"{out_dir} is a file, not a directory; choose another --out")
        if not (out_dir / CONFIG).is_file():
            if any(out_dir.iterdir()):
                raise ConfigError(f"{out_dir} exists and holds other files (no {CONFIG}); choose another --out")
            return
    try:
        saved = to_dict(load_config(out_dir / CONFIG))
    except ConfigError as error:
        raise ConfigError(f"{out_dir} holds a {CONFIG} this version cannot read ({error}); "
                          "choose another --out") from None  # fmt: skip
    diff = first_difference(saved, to_dict(config), ignore=RERUN_MAY_CHANGE)
    if diff is None and (out_dir / TARGET_JSON).is_file():
        try:
            old = json.loads((out_dir / TARGET_JSON).read_text(encoding="utf-8")).get("settings", {})
        except (OSError, ValueError, AttributeError):
            old = {}
        diff = first_difference(_comparable(old), _comparable(settings))
    if diff is not None:
        raise ConfigError(f"{out_dir} already holds results with other settings ({diff}); "
                          "choose another --out or delete it")  # fmt: skip


def _accuracy(model: nn.Module, test: ImageDataset, config: RunConfig) -> float:
    return evaluate(model, batches(test, config.data.test_batch_size, shuffle=False)).accuracy


def measure(final: nn.Module, dense: nn.Module, example: Tensor, budget: Budget) -> tuple[Achieved, dict[str, Any]]:
    """``final`` against ``dense``: MAC and parameter fractions (exact; the MACs of the
    budget's layers when it has a scope), latency when the budget has one (timed at its
    batch size); plus the absolute counts per image (all MACs, and the scoped ones)."""
    n = example.shape[0]
    dense_macs, final_macs = count_macs(dense, (example,)).total, count_macs(final, (example,)).total
    dense_params, final_params = count_parameters(dense), count_parameters(final)
    latency, sizes = None, {
        "dense": {"macs_per_image": dense_macs // n, "params": dense_params},
        "final": {"macs_per_image": final_macs // n, "params": final_params},
    }
    layers = budget.pinned_to(dense).mac_layers(dense)
    if layers is not None:
        dense_macs = count_macs(dense, (example,), layers).total
        final_macs = count_macs(final, (example,), layers).total
        sizes["dense"]["scoped_macs_per_image"] = dense_macs // n
        sizes["final"]["scoped_macs_per_image"] = final_macs // n
    if budget.latency_ms is not None:
        x = torch.zeros((budget.batch_size, *example.shape[1:]), dtype=example.dtype, device=example.device)
        latency = measure_latency(final, x).median_ms
        sizes["dense"]["latency_ms"] = measure_latency(dense, x).median_ms
        sizes["final"]["latency_ms"] = latency
    achieved = Achieved(final_macs / max(1, dense_macs), final_params / max(1, dense_params), latency)
    return achieved, sizes


def _baseline(run_dir: Path, config: RunConfig) -> dict[str, Any]:
    """Accuracy and epochs of the baseline run the final model is compared with."""
    run = load_run(run_dir)
    if run.config.data.name != config.data.name:
        raise ConfigError(f"--baseline {run_dir}: trained on {run.config.data.name}, "
                          f"but this run on {config.data.name}")  # fmt: skip
    regularized = bool(run.config.regularization.rules)
    if regularized:
        log.warning("baseline %s is regularized (%d rules): the drop is not against plain training",
                    run_dir, len(run.config.regularization.rules))  # fmt: skip
    return {
        "run": str(run_dir),
        "accuracy": _accuracy(run.model, run.test, run.config),
        "epochs": run.config.train.epochs + run.config.finetune.epochs,
        "regularized": regularized,
    }


def _epochs(config: RunConfig, target: TargetConfig) -> dict[str, Any]:
    dense = {"train": config.train.epochs, "finetune": config.finetune.epochs}
    epochs = {"dense_run": dense, "recovery": target.finetune_epochs,
              "total": dense["train"] + dense["finetune"] + target.finetune_epochs}  # fmt: skip
    if target.select_after_epochs is not None:  # the "dense" model was pruned during training
        epochs["selected_after"] = target.select_after_epochs
    return epochs


def compress(
    config: RunConfig,
    dense: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    out_dir: str | Path,
    *,
    method: SelectionMethod | None = None,
    baseline: str | Path | None = None,
    source: str | Path | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Select under ``config.target``, fine-tune, measure and save into ``out_dir``.

    ``dense`` is the trained model (left unchanged); ``method`` overrides
    :func:`shrinkage.config.default_selection`; ``baseline`` is the run directory of an unregularized run
    whose accuracy the final one is compared with. Returns what ``target.json`` holds.
    """
    target = config.target
    if target is None:
        raise ConfigError(f"{config.name}: the config has no target: block to compress to")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    chosen = method or default_selection(config.regularization)
    settings = _settings(config, method, baseline, source)
    refuse_other_settings(out_dir, config, settings)
    base = _baseline(Path(baseline), config) if baseline is not None else None
    if target.distill_weight > 0 and target.finetune_epochs == 0:
        log.warning("distill_weight %g has no effect without finetune_epochs", target.distill_weight)
    dense.eval()
    budget = target.budget().pinned_to(dense)  # a scoped budget counts the dense model's layers by name
    example = example_inputs(test.images)
    selector = selection_for(config, dense, chosen, tuple(example.shape[1:]), train)
    log.info("compressing %s to %s by %s", config.name, budget, chosen.value)
    accuracy: dict[str, Any] = {"n": len(test), "dense": _accuracy(dense, test, config)}
    selected = selector.select(dense, example, budget)
    if target.recalibrate_batches:
        calibration = calibration_batches(train, config.data.batch_size, config.train.seed, target.recalibrate_batches)
        layers = recalibrate_batchnorm(selected.model, (x for x, _ in calibration))
        if layers:
            accuracy["batchnorm_recalibrated"] = {"layers": layers, "batches": len(calibration)}
    accuracy["selected"] = _accuracy(selected.model, test, config)
    lr = target.finetune_lr or config.finetune.lr or config.train.lr
    rows = finetune(
        selected.model, train, test, target.finetune_epochs, lr,
        batch_size=config.data.batch_size, test_batch_size=config.data.test_batch_size,
        momentum=config.train.momentum, weight_decay=config.train.weight_decay, mask=selected.mask,
        teacher=dense if target.distill_weight > 0 else None, distill_weight=target.distill_weight,
        temperature=target.temperature, seed=config.train.seed,
        augment=get_dataset_spec(config.data.name).train_augment,
    )  # fmt: skip
    final = selector.finish(selected.model, example)
    accuracy["finetuned"] = _accuracy(final, test, config)
    achieved, sizes = measure(final, dense, example, budget)
    if not achieved.meets(budget):
        log.warning("the final model misses %s: %s", budget, achieved)
    if base is not None:
        base["drop"] = base["accuracy"] - accuracy["finetuned"]
    result: dict[str, Any] = {
        "name": config.name,
        "settings": settings,
        "budget": {**budget.targets(), "batch_size": budget.batch_size, "macs_of": budget.scope()},
        "side_by_side": achieved.side_by_side(budget),
        "achieved": {"macs": achieved.macs, "params": achieved.params, "latency_ms": achieved.latency_ms},
        "met": achieved.meets(budget),
        "size": sizes,
        "accuracy": accuracy,
        "baseline": base,
        "recovery": {"epochs": target.finetune_epochs, "lr": lr, "distill_weight": target.distill_weight,
                     "temperature": target.temperature, "rows": rows},  # fmt: skip
        "selection": selected.details,
        "epochs": _epochs(config, target),
        "seed": config.train.seed,
        "command": command,
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "time_s": round(time.perf_counter() - started, 3),
        "files": {"config": CONFIG, "model": TARGET_WEIGHTS, "markdown": TARGET_MD},
    }
    _save(out_dir, config, final, result)
    return result


def _save(out_dir: Path, config: RunConfig, final: nn.Module, result: dict[str, Any]) -> None:
    """The config first (it names what the directory holds, see :func:`refuse_other_settings`),
    then the model, then the JSON and markdown that describe it; each file atomically."""
    with reporting_write_errors("output directory", out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(out_dir / CONFIG, to_dict(config))
        shrinkage.save(final, out_dir / TARGET_WEIGHTS)
        write_json(out_dir / TARGET_JSON, result)
        write_text(out_dir / TARGET_MD, f"# Compressed to a budget: {config.name}\n\n" + target_markdown(result))
    log.info("wrote %s, %s and %s in %s", TARGET_WEIGHTS, TARGET_JSON, TARGET_MD, out_dir)


def compress_run(
    run_dir: str | Path,
    target: TargetConfig,
    out_dir: str | Path | None = None,
    *,
    method: SelectionMethod | None = None,
    baseline: str | Path | None = None,
    command: str | None = None,
    config: str | Path | None = None,
    overrides: list[str] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Compress the trained model of ``run_dir`` to ``target`` into ``out_dir`` (default
    :func:`default_out_dir`); returns the directory and the results.

    ``run_dir`` may also be a model file written by :func:`shrinkage.save`; ``config``
    (with ``overrides``, as ``--set``) then gives its architecture, data and training
    settings, and budgets are fractions of that model as saved."""
    known = source_config(run_dir, config, overrides)
    out = Path(out_dir) if out_dir is not None else default_out_dir(run_dir, target.budget())
    if known.is_file():  # refuse before loading data and model (loading names a bad source)
        saved = dataclasses.replace(load_config(known, overrides or []), target=target)
        refuse_other_settings(out, saved, _settings(saved, method, baseline, run_dir))
    run = load_source(run_dir, config, overrides)
    config_ = dataclasses.replace(run.config, target=target)
    train, _ = load_datasets(run.config, next(run.model.parameters()).device)
    result = compress(config_, run.model, train, run.test, out, method=method, baseline=baseline,
                      source=run_dir, command=command)  # fmt: skip
    return out, result
