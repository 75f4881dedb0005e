"""Re-check a saved model without retraining: load it onto a fresh zoo model, measure it.

``shrinkage evaluate MODEL.safetensors --model resnet20 --data cifar10-jpeg`` rebuilds the
architecture (its geometry from the dataset), loads the file written by
:func:`shrinkage.save` (compacted, factorized or dense), and reports accuracy on the
full test set with the parameter and MAC counts, so any row of a results table can be
checked from its committed weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import shrinkage
from shrinkage.config import ModelConfig
from shrinkage.data import batches, get_dataset_spec
from shrinkage.errors import ConfigError
from shrinkage.metrics import count_macs, count_parameters, evaluate
from shrinkage.train.setup import build_model, seed_everything

__all__ = ["evaluate_saved"]


def evaluate_saved(
    path: str | Path, model: str, data: str, data_dir: str | Path | None = None, batch_size: int = 1000
) -> dict[str, Any]:
    """Accuracy (all test images), parameters and MACs of the model saved at ``path``.

    ``model`` is the zoo name of the architecture it was made from and ``data`` the
    dataset name (``data_dir`` or ``$SHRINKAGE_DATA_DIR`` locates its files).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    spec = get_dataset_spec(data)
    seed_everything(0)  # the base model's initial weights are all replaced; seeded anyway
    base = build_model(ModelConfig(model, spec.in_channels, spec.num_classes, spec.image_size))
    dense_params = count_parameters(base)
    example = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size)
    dense_macs = count_macs(base, (example,)).total
    loaded = shrinkage.load(path, base).eval()
    test = spec.load("test", data_dir)
    result = evaluate(loaded, batches(test, batch_size, shuffle=False))
    params, macs = count_parameters(loaded), count_macs(loaded, (example,)).total
    return {
        "model_file": str(path),
        "model": model,
        "dataset": spec.title,
        "test_images": result.n,
        "accuracy": result.accuracy,
        "params": params,
        "params_fraction": params / dense_params,
        "macs": macs,
        "macs_fraction": macs / dense_macs,
    }
