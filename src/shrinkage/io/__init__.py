"""File output: atomic writes and pickle-free checkpoints."""

from shrinkage.io.atomic import atomic_open, atomic_path, write_bytes, write_csv, write_json, write_text, write_yaml
from shrinkage.io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, sidecar

__all__ = [
    "Checkpoint",
    "atomic_open",
    "atomic_path",
    "load_checkpoint",
    "save_checkpoint",
    "sidecar",
    "write_bytes",
    "write_csv",
    "write_json",
    "write_text",
    "write_yaml",
]
