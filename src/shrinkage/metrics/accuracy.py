"""Classification accuracy and cross-entropy loss over a full pass of a data set."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shrinkage.errors import DataError
from shrinkage.metrics._common import eval_mode, require_module

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """Result of :func:`evaluate`.

    Attributes:
        accuracy: fraction of samples whose arg-max logit equals the label.
        error: ``1 - accuracy``.
        loss: mean cross-entropy per sample.
        n: number of samples seen.
    """

    accuracy: float
    error: float
    loss: float
    n: int


def _model_device(model: nn.Module) -> torch.device | None:
    first = next(model.parameters(), None)
    return first.device if first is not None else None


def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> Evaluation:
    """Evaluate ``model`` on every ``(inputs, labels)`` batch, logits vs integer labels.

    Runs in eval mode under ``torch.inference_mode`` and restores the training flags.
    Batches are moved to the device of the model's first parameter. Loss and
    accuracy are summed per sample and divided once at the end, so a smaller last
    batch is weighted correctly (a mean of batch means would not be).
    """
    require_module(model, "evaluate")
    device = _model_device(model)
    correct = 0
    loss_sum = 0.0
    n = 0
    with eval_mode(model), torch.inference_mode():
        for index, batch in enumerate(batches):
            try:
                inputs, labels = batch
            except (TypeError, ValueError):
                raise DataError(f"evaluate: batch {index} is not an (inputs, labels) pair") from None
            if device is not None:
                inputs, labels = inputs.to(device), labels.to(device)
            logits = model(inputs)
            if logits.dim() < 1 or logits.shape[0] != labels.shape[0]:
                raise DataError(
                    f"evaluate: batch {index} has {labels.shape[0]} labels but the model "
                    f"returned output of shape {tuple(logits.shape)}"
                )
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=1) == labels).sum())
            n += labels.shape[0]
    if n == 0:
        raise DataError("evaluate: batches yielded no samples")
    accuracy = correct / n
    log.debug("evaluate: n=%d accuracy=%.4f loss=%.4f", n, accuracy, loss_sum / n)
    return Evaluation(accuracy=accuracy, error=1.0 - accuracy, loss=loss_sum / n, n=n)
