"""Training loop, checkpoints, the train -> compact -> report pipeline, compression to a budget."""

from shrinkage.train.compaction import Compacted, compact_model, save_compact
from shrinkage.train.phases import FINETUNE, REGULARIZE, Phase, PhaseRuntime, plan_phases
from shrinkage.train.pipeline import (
    CONFIG,
    LoadedRun,
    compact_run,
    default_run_dir,
    load_run,
    load_saved,
    load_source,
    report_run,
    run_experiment,
)
from shrinkage.train.compress import compress, compress_run, default_out_dir
from shrinkage.train.recover import finetune
from shrinkage.train.report import build_report
from shrinkage.train.setup import build_model, load_datasets, seed_everything
from shrinkage.train.trainer import CHECKPOINT, METRICS, Trainer, TrainResult, check_same_training

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "FINETUNE",
    "METRICS",
    "REGULARIZE",
    "Compacted",
    "LoadedRun",
    "Phase",
    "PhaseRuntime",
    "TrainResult",
    "Trainer",
    "build_model",
    "build_report",
    "check_same_training",
    "compact_model",
    "compact_run",
    "compress",
    "compress_run",
    "default_out_dir",
    "default_run_dir",
    "finetune",
    "load_datasets",
    "load_run",
    "load_saved",
    "load_source",
    "plan_phases",
    "report_run",
    "run_experiment",
    "save_compact",
    "seed_everything",
]
