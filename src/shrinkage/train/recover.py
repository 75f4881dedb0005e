"""Recovery after selection: fine-tune a pruned (masked) or factorized model.

The pruned model is fine-tuned *before* compaction, in its original shape, with a
:class:`ZeroMask` re-applied after every step: momentum and weight decay would
otherwise revive the removed structures, and the compacted model would no longer
match the budget. A factorized model trains as it is, its two thin layers per
original layer learning separately.

Optionally the dense model teaches (Hinton et al., 2015): the loss is
``(1 - w) * CE(student, labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))``;
the ``T^2`` keeps the soft term's gradients on the scale of the hard one's as ``T`` varies.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shrinkage.config import CosineSchedule, ScheduleConfig
from shrinkage.config.fields import MAX_SEED
from shrinkage.data import BatchAugment, ImageDataset, batches
from shrinkage.errors import ConfigError, TrainingError
from shrinkage.metrics import evaluate
from shrinkage.optim import ZeroMask

log = logging.getLogger(__name__)


def distillation_loss(student: Tensor, teacher: Tensor, labels: Tensor, weight: float, temperature: float) -> Tensor:
    """``(1 - weight) * CE + weight * T^2 * KL(teacher_T || student_T)``, batch mean."""
    hard = F.cross_entropy(student, labels)
    if weight == 0:
        return hard
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)  # fmt: skip
    return (1 - weight) * hard + weight * soft


def _check(epochs: int, lr: float, distill_weight: float, temperature: float, seed: int,
           teacher: nn.Module | None) -> None:  # fmt: skip
    # the same bounds as the target config, for callers that come without one
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"finetune: epochs must be an integer >= 0, got {epochs!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"finetune: lr must be a finite number > 0, got {lr!r}")
    if not 0 <= distill_weight <= 1:
        raise ConfigError(f"finetune: distill_weight must be in [0, 1], got {distill_weight!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"finetune: temperature must be a finite number > 0, got {temperature!r}")
    if distill_weight > 0 and teacher is None:
        raise ConfigError("finetune: distill_weight > 0 needs a teacher model")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"finetune: seed must be an integer in [0, {MAX_SEED}], got {seed!r}")


def finetune(
    model: nn.Module,
    train_set: ImageDataset,
    test_set: ImageDataset,
    epochs: int,
    lr: float,
    *,
    batch_size: int = 64,
    test_batch_size: int = 1000,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    mask: ZeroMask | None = None,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
    temperature: float = 4.0,
    seed: int = 0,
    schedule: ScheduleConfig | None = None,
    augment: BatchAugment | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` in place for ``epochs`` with SGD; one row per epoch.

    ``mask`` (from :meth:`shrinkage.PruneResult.zero_mask`) is re-applied after every
    step, so removed structures stay exactly zero. ``teacher`` (the dense model) adds
    the distillation term with ``distill_weight`` at ``temperature``. ``schedule``
    defaults to cosine annealing over the epochs. ``augment`` is applied to every training
    batch (the dataset's ``train_augment``). Shuffling and any randomness inside
    the model come from ``seed``; the caller's global RNG state is left as it was.
    Rows: ``epoch``, ``lr``, ``train_loss`` (the objective), ``train_ce``,
    ``test_accuracy`` and ``test_loss`` on the full ``test_set``, ``time_s``.
    """
    _check(epochs, lr, distill_weight, temperature, seed, teacher)
    if epochs == 0:
        return []
    device = next(model.parameters()).device
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = (schedule or CosineSchedule()).build(optimizer, epochs)
    generator = torch.Generator().manual_seed(seed)
    if teacher is not None:
        teacher.eval()
    if mask is not None:
        mask.apply_()
        log.info("fine-tuning with %d weights held at zero", mask.zero_count)
    rows: list[dict[str, Any]] = []
    # forked so that fine-tuning inside a run (after training) does not shift the caller's RNG
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for epoch in range(1, epochs + 1):
            started = time.perf_counter()
            current_lr = float(optimizer.param_groups[0]["lr"])
            loss, ce = _epoch(model, train_set, batch_size, generator, optimizer, mask, teacher,
                              distill_weight, temperature, epoch, augment)  # fmt: skip
            if scheduler is not None:
                scheduler.step()
            result = evaluate(model, batches(test_set, test_batch_size, shuffle=False))
            row = {"epoch": epoch, "lr": current_lr, "train_loss": loss, "train_ce": ce,
                   "test_accuracy": result.accuracy, "test_loss": result.loss,
                   "time_s": round(time.perf_counter() - started, 3)}  # fmt: skip
            rows.append(row)
            log.info("recovery epoch %d/%d: loss %.4f, test accuracy %.2f%%, lr %.3g, %.1fs",
                     epoch, epochs, loss, 100 * result.accuracy, current_lr, row["time_s"])  # fmt: skip
    model.eval()
    return rows


def _epoch(model: nn.Module, data: ImageDataset, batch_size: int, generator: torch.Generator,
           optimizer: torch.optim.Optimizer, mask: ZeroMask | None, teacher: nn.Module | None,
           weight: float, temperature: float, epoch: int,
           augment: BatchAugment | None = None) -> tuple[float, float]:  # fmt: skip
    """One pass over ``data``; the sample-weighted mean objective and cross-entropy."""
    model.train()
    loss_sum = ce_sum = 0.0
    seen = 0
    for step, (inputs, labels) in enumerate(batches(data, batch_size, shuffle=True, generator=generator), 1):
        if augment is not None:
            inputs = augment(inputs, generator)
        optimizer.zero_grad()
        logits = model(inputs)
        if teacher is not None and weight > 0:
            with torch.no_grad():
                target = teacher(inputs)
            loss = distillation_loss(logits, target, labels, weight, temperature)
        else:
            loss = F.cross_entropy(logits, labels)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(f"recovery fine-tuning: loss is {value} in epoch {epoch}, step {step} (lower the lr?)")
        loss.backward()
        optimizer.step()
        if mask is not None:
            mask.apply_()
        n = labels.shape[0]
        loss_sum += value * n
        ce_sum += float(F.cross_entropy(logits.detach(), labels)) * n
        seen += n
    return loss_sum / max(1, seen), ce_sum / max(1, seen)
