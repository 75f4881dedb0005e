"""File output: atomic writes and pickle-free checkpoints."""

from shrinkage.io.atomic import (
    atomic_open,
    atomic_path,
    remove_stale_temp_files,
    reporting_write_errors,
    write_bytes,
    write_csv,
    write_json,
    write_text,
    write_yaml,
)
from shrinkage.io.checkpoint import Checkpoint, load_checkpoint, read_checkpoint_state, save_checkpoint, sidecar

__all__ = [
    "Checkpoint",
    "atomic_open",
    "atomic_path",
    "load_checkpoint",
    "read_checkpoint_state",
    "remove_stale_temp_files",
    "reporting_write_errors",
    "save_checkpoint",
    "sidecar",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_text",
    "write_yaml",
]
