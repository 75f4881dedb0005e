"""Per-epoch records: structure statistics of the regularized terms and metrics.csv."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shrinkage.io import write_csv
from shrinkage.optim import Regularizer, Rule

#: fixed leading columns of metrics.csv; structure columns follow
COLUMNS = ("phase", "epoch", "global_epoch", "lr", "train_loss", "penalty", "test_accuracy", "test_loss", "time_s")


def term_labels(regularizer: Regularizer, rules: Sequence[Rule]) -> list[str]:
    """A unique label per term: ``<module>.<group kind>`` (``conv1.filters``).

    The term's own label names module and penalty only, so the filters and channels of
    one layer would collide; the group kind comes from the rule the term was built from.
    """
    labels: list[str] = []
    for term in regularizer.terms:
        base = f"{term.grouping.label}.{type(rules[term.rule].groups).__name__.lower()}"
        label, n = base, 2
        while label in labels:
            label, n = f"{base}#{n}", n + 1
        labels.append(label)
    return labels


@torch.no_grad()
def structure_stats(regularizer: Regularizer | None, labels: Sequence[str]) -> dict[str, float]:
    """Flat ``{"conv1.filters.zero_groups": 0.25, "fc1.matrix.rank": 12.0, ...}``.

    With a budget controller attached to the regularizer, also its columns: each rule's
    strength multiplier (``strength_scale[rule0]``), ``estimated_macs``, ``forecast_macs``
    and ``target_macs`` (fractions of the dense model's MACs).
    """
    if regularizer is None:
        return {}
    stats: dict[str, float] = {}
    for index, label in enumerate(labels):
        for key, value in regularizer.structure_of(index).items():
            stats[f"{label}.{key}"] = float(value)
    if regularizer.controller is not None:
        stats.update({key: float(value) for key, value in regularizer.controller.stats().items()})
    return stats


def write_metrics(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rewrite ``metrics.csv`` whole (atomically) with every row so far."""
    extra = list(dict.fromkeys(k for row in rows for k in row if k not in COLUMNS))
    write_csv(path, rows, [*COLUMNS, *extra])
