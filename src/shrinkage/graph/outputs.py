"""A model's output tensors, in one order every part of shrinkage agrees on."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def output_tensors(y: Any) -> list[Tensor]:
    """The tensors of a model's output, depth first: a tensor, or tuples, lists and dicts
    (a Hugging Face ``ModelOutput`` is a dict) of them, in their own order; anything else
    (None, numbers) holds none."""
    if isinstance(y, Tensor):
        return [y]
    if isinstance(y, dict):
        return [t for v in y.values() for t in output_tensors(v)]
    if isinstance(y, (tuple, list)):
        return [t for v in y for t in output_tensors(v)]
    return []
