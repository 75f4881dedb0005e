"""``shrinkage`` command line: train | compact | report | compress | evaluate | demo.

The only place that prints: results go to stdout, errors to stderr as one line
``error: <message>`` with exit status 2 (no traceback for problems the user can fix).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
import tempfile
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from shrinkage.errors import ConfigError, ShrinkageError

if TYPE_CHECKING:
    from shrinkage.budget import Budget

log = logging.getLogger("shrinkage.cli")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shrinkage", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train, compact and report one config")
    train.add_argument("config", type=Path, help="YAML run config (see configs/)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.lr=0.05 (repeatable)")
    train.add_argument("--out", type=Path, help="run directory (default: OUT_DIR/NAME from the config); "
                       "an existing run there is resumed")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(handler=_train)

    for name, text in (("compact", "redo compaction of a trained run"), ("report", "redo the report of a run")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("run_dir", type=Path, help="a run directory written by 'shrinkage train'")
        cmd.set_defaults(handler=_compact if name == "compact" else _report)

    _add_compress(sub)

    evaluate = sub.add_parser("evaluate", help="accuracy, parameters and MACs of a model saved by shrinkage.save")
    evaluate.add_argument("model_file", type=Path, help="a .safetensors file written by shrinkage.save")
    evaluate.add_argument("--model", required=True, help="zoo name of the architecture it was made from")
    evaluate.add_argument("--data", required=True, help="dataset name (its test split is used, all of it)")
    evaluate.add_argument("--data-dir", type=Path, help="where the dataset files are (default: $SHRINKAGE_DATA_DIR)")
    evaluate.set_defaults(handler=_evaluate)

    demo = sub.add_parser("demo", help="LeNet + SSL on the bundled MNIST, end to end (a few minutes)")
    demo.add_argument("--out", type=Path, help="run directory (default: a new temporary directory)")
    demo.add_argument("--epochs", type=int, help="regularized training epochs (default: from the demo config)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(handler=_demo)
    return parser


def _add_compress(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser("compress", help="cut a trained run down to a budget, fine-tune it, save it with a report")
    cmd.add_argument("run_dir", type=Path, metavar="RUN_DIR|MODEL_FILE",
                     help="a run directory written by 'shrinkage train', or a model file written by "
                     "shrinkage.save (with --config)")
    cmd.add_argument("--config", type=Path, metavar="CONFIG",
                     help="with a model file: the YAML config it was trained with (architecture, data, training)")
    cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="with --config: override a config value, e.g. --set train.seed=1 (repeatable)")
    cmd.add_argument("--target", action="append", required=True, metavar="KEY=VALUE",
                     help="a budget: macs=0.25 or params=0.1 (fractions of the dense model), latency_ms=5 "
                     "(at batch_size=N, default 1), macs_of=Conv2d (macs counts those layers' MACs only); "
                     "repeatable, every target must hold")
    cmd.add_argument("--finetune-epochs", type=int, default=0, metavar="N", help="recovery epochs (default 0)")
    cmd.add_argument("--lr", type=float, help="recovery learning rate (default: the run's fine-tuning, else its lr)")
    cmd.add_argument("--distill", type=float, default=0.0, metavar="W",
                     help="weight in [0, 1] of distillation from the dense model (default 0)")
    cmd.add_argument("--temperature", type=float, default=4.0, metavar="T", help="of distillation (default 4)")
    cmd.add_argument("--round-to", default="1", metavar="K|auto",
                     help="kept channel counts: multiples of K; auto: the block the current device's convolution "
                     "kernels compute in (16 with AVX-512, 8 with AVX2)")
    cmd.add_argument("--importance", metavar="taylor|norm", default="taylor",
                     help="pruning's damage estimate: loss change on training batches (default) or group norms")
    cmd.add_argument("--rank-criterion", metavar="log_kept|lost", default="log_kept",
                     help="factorization's choice of ranks: keep the most product of the layers' energy shares "
                     "(default) or lose the least sum of them")
    cmd.add_argument("--recalibrate-batches", type=int, default=None, metavar="N",
                     help="training batches on which BatchNorm statistics are re-estimated after selection "
                     "(default: the target block's, 32; 0: keep the dense model's)")
    cmd.add_argument("--method", metavar="prune|factorize",
                     help="how to select (default: factorize after a nuclear-norm run, else prune)")
    cmd.add_argument("--baseline", type=Path, metavar="RUN_DIR", help="an unregularized run to compare accuracy with")
    cmd.add_argument("--out", type=Path, help="output directory (default: RUN_DIR-<target>, e.g. runs/x-macs0.25)")
    cmd.set_defaults(handler=_compress)


@contextlib.contextmanager
def _logging(verbose: int, quiet: bool) -> Iterator[None]:
    """Send the library's log records to stderr for the duration of one command.

    The previous logger state is restored afterwards, so calling ``main()`` from
    Python (or a test) leaves the caller's logging as it was.
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname).1s %(name)s: %(message)s" if verbose else "%(message)s"))
    ours = logging.getLogger("shrinkage")
    # torch.utils.benchmark imports cpp_extension, which warns about a missing CUDA toolkit
    # on CPU-only machines: noise for a user who only times CPU inference
    noisy = logging.getLogger("torch.utils.cpp_extension")
    saved = (ours.level, list(ours.handlers), noisy.level)
    ours.addHandler(handler)
    ours.setLevel(level)
    noisy.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ours.removeHandler(handler)
        ours.setLevel(saved[0])
        noisy.setLevel(saved[2])


def _progress(no_progress: bool) -> bool:
    return not no_progress and sys.stderr.isatty()


def _train(args: argparse.Namespace, command: str) -> int:
    from shrinkage.config import load_config
    from shrinkage.train import default_run_dir, run_experiment

    config = load_config(args.config, args.overrides)
    run_dir = args.out or default_run_dir(config)
    log.info("run directory: %s", run_dir)
    if run_experiment(config, run_dir, progress=_progress(args.no_progress), command=command):  # {}: not rank 0
        print((run_dir / "report.md").read_text(encoding="utf-8"))
        print(f"run written to {run_dir}")
    return 0


def _compact(args: argparse.Namespace, command: str) -> int:
    from shrinkage.metrics import count_parameters
    from shrinkage.train import compact_run

    compacted = compact_run(args.run_dir)
    print(f"compact model: {count_parameters(compacted.model):,} parameters, "
          f"max output difference {compacted.max_abs_diff:.3g} on {compacted.checked_on}; "
          f"saved to {args.run_dir / 'compact.safetensors'}")
    return 0


def _report(args: argparse.Namespace, command: str) -> int:
    from shrinkage.train import report_run

    report_run(args.run_dir, command=command)
    print((args.run_dir / "report.md").read_text(encoding="utf-8"))
    return 0


#: --target keys and the type of their values (the fields of shrinkage.Budget)
_BUDGET_KEYS: dict[str, type] = {"macs": float, "macs_of": tuple, "params": float, "latency_ms": float,
                                 "batch_size": int}
#: TargetConfig fields set by compress flags, for errors that name the flag
_RECOVERY_FLAGS = {"finetune_epochs": "--finetune-epochs", "finetune_lr": "--lr", "distill_weight": "--distill",
                   "temperature": "--temperature", "round_to": "--round-to",
                   "recalibrate_batches": "--recalibrate-batches"}


def _given(**flags: object) -> dict[str, object]:
    """The flags the user gave (not None): the others keep the target block's defaults."""
    return {key: value for key, value in flags.items() if value is not None}


def parse_budget(items: Sequence[str]) -> Budget:
    """``["macs=0.25", "params=0.1"]`` -> ``Budget(macs=0.25, params=0.1)``; ``macs_of=Conv2d``
    counts the MACs of those layer types only; one-line errors."""
    from shrinkage.budget import Budget
    from shrinkage.config.modules import MODULE_TYPES

    values: dict[str, object] = {}
    for item in items:
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep:
            raise ConfigError(f"--target {item}: expected KEY=VALUE, e.g. macs=0.25")
        if key not in _BUDGET_KEYS:
            raise ConfigError(f"--target: unknown key '{key}' (known: {', '.join(_BUDGET_KEYS)})")
        if key in values:
            raise ConfigError(f"--target: '{key}' is given twice")
        if key == "macs_of":  # layer type names, e.g. Conv2d or Conv2d,Linear
            names = [name.strip() for name in text.split(",")]
            unknown = [name for name in names if name not in MODULE_TYPES]
            if unknown:
                raise ConfigError(f"--target {item}: unknown layer type '{unknown[0]}' "
                                  f"(known: {', '.join(MODULE_TYPES)})")  # fmt: skip
            values[key] = tuple(MODULE_TYPES[name] for name in names)
            continue
        kind = _BUDGET_KEYS[key]
        try:
            values[key] = kind(text)
        except ValueError:
            wanted = "an integer" if kind is int else "a number"
            raise ConfigError(f"--target {item}: '{text}' is not {wanted}") from None
    try:
        return Budget(**values)  # type: ignore[arg-type]
    except ConfigError as error:  # out of range, or batch_size alone
        raise ConfigError(f"--target: {error}") from None


def _round_to(text: str) -> int:
    """``--round-to``: a positive integer, or ``auto`` for :func:`shrinkage.channel_multiple`."""
    if text.strip() == "auto":
        from shrinkage.compact.alignment import channel_multiple

        return channel_multiple()
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--round-to: '{text}' is neither an integer nor 'auto'") from None


def _compress(args: argparse.Namespace, command: str) -> int:
    from shrinkage.budget import RankCriterion
    from shrinkage.config import PruneImportance, SelectionMethod, TargetConfig
    from shrinkage.config.fields import FieldError
    from shrinkage.train import compress_run
    from shrinkage.train.report import TARGET_MD

    budget = parse_budget(args.target)
    method = None
    if args.method is not None:
        known = {m.value: m for m in SelectionMethod}
        if args.method not in known:
            raise ConfigError(f"--method: unknown method '{args.method}' (known: {', '.join(known)})")
        method = known[args.method]
    importances = {i.value: i for i in PruneImportance}
    if args.importance not in importances:
        raise ConfigError(f"--importance: unknown estimate '{args.importance}' (known: {', '.join(importances)})")
    criteria = {c.value: c for c in RankCriterion}
    if args.rank_criterion not in criteria:
        raise ConfigError(f"--rank-criterion: unknown criterion '{args.rank_criterion}' (known: {', '.join(criteria)})")
    round_to = _round_to(args.round_to)
    try:
        target = TargetConfig.of_budget(budget, finetune_epochs=args.finetune_epochs, finetune_lr=args.lr,
                                        distill_weight=args.distill, temperature=args.temperature,
                                        round_to=round_to, importance=importances[args.importance],
                                        rank_criterion=criteria[args.rank_criterion],
                                        **_given(recalibrate_batches=args.recalibrate_batches))  # fmt: skip
    except FieldError as error:
        raise ConfigError(f"{_RECOVERY_FLAGS.get(error.field, '--target ' + error.field)}: {error.reason}") from None
    out, _ = compress_run(args.run_dir, target, args.out, method=method, baseline=args.baseline, command=command,
                          config=args.config, overrides=args.overrides)  # fmt: skip
    print((out / TARGET_MD).read_text(encoding="utf-8"))
    print(f"compressed model written to {out}")
    return 0


def _evaluate(args: argparse.Namespace, command: str) -> int:
    from shrinkage.train.evaluate_saved import evaluate_saved

    result = evaluate_saved(args.model_file, args.model, args.data, args.data_dir)
    print(f"{result['model_file']}: {result['model']} on {result['dataset']}")
    print(f"test accuracy {100 * result['accuracy']:.2f}% on {result['test_images']} images")
    print(f"parameters {result['params']:,} ({100 * result['params_fraction']:.1f}% of dense), "
          f"MACs {result['macs']:,} ({100 * result['macs_fraction']:.1f}% of dense)")
    return 0


def _demo(args: argparse.Namespace, command: str) -> int:
    from shrinkage.config import parse_config
    from shrinkage.train import run_experiment

    text = resources.files("shrinkage.config").joinpath("demo.yaml").read_text(encoding="utf-8")
    overrides = [f"train.epochs={args.epochs}"] if args.epochs is not None else []
    config = parse_config(text, "shrinkage/config/demo.yaml", overrides)
    run_dir = args.out or Path(tempfile.mkdtemp(prefix="shrinkage-demo-"))
    log.info("demo: LeNet, proximal group Lasso on conv filters/channels and fc1 columns, %d + %d epochs; "
             "run directory %s", config.train.epochs, config.finetune.epochs, run_dir)
    if run_experiment(config, run_dir, progress=_progress(args.no_progress), command=command):  # {}: not rank 0
        print((run_dir / "report.md").read_text(encoding="utf-8"))
        print(f"run written to {run_dir}")
    return 0


def _is_main_process(args: argparse.Namespace) -> bool:
    """Whether this process reports: rank 0 under torchrun, which only train and demo support."""
    from shrinkage.train.distributed import launched

    world = launched()
    if world.size > 1 and args.handler not in (_train, _demo):
        raise ConfigError(f"'shrinkage {args.command}' runs in one process; only train and demo run under "
                          f"torchrun (started with {world.size} processes)")
    return world.is_main


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shrinkage`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors and --help: argparse has printed; return, don't exit
        return exit_.code if isinstance(exit_.code, int) else EXIT_USER_ERROR
    command = "shrinkage " + shlex.join(argv)
    try:
        main_process = _is_main_process(args)
    except ShrinkageError as error:
        print("error: " + str(error), file=sys.stderr)
        return EXIT_USER_ERROR
    # under torchrun only rank 0 reports progress; the others say only what goes wrong
    with _logging(args.verbose, args.quiet or not main_process):
        try:
            return int(args.handler(args, command))
        except ShrinkageError as error:
            # one line even if a message from deeper down spans several
            print("error: " + " ".join(str(error).split()), file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to resume from the last completed epoch", file=sys.stderr)
            return EXIT_INTERRUPTED
