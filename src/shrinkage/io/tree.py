"""Split a nested state (optimizer/scheduler ``state_dict``) into JSON and tensors.

Pickle would run code on load; instead tensors go into a safetensors file under
generated keys and everything else becomes JSON with ``{"__tensor__": key}``
placeholders. Two details JSON cannot express are encoded explicitly so that the
round trip is exact: dicts with non-string keys (an optimizer's ``state`` is keyed by
parameter index) and tuples (Adam's ``betas``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from shrinkage.errors import DataError

_TENSOR, _ITEMS, _TUPLE, _FLOAT = "__tensor__", "__items__", "__tuple__", "__float__"
_MARKERS = {_TENSOR, _ITEMS, _TUPLE, _FLOAT}


def encode(tree: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-safe copy of ``tree``; its tensors are added to ``tensors`` under ``prefix/<n>``."""
    if isinstance(tree, Tensor):
        key = f"{prefix}/{len(tensors)}"
        # own, contiguous CPU copies: safetensors refuses shared or strided storage
        tensors[key] = tree.detach().to("cpu").contiguous().clone()
        return {_TENSOR: key}
    if isinstance(tree, Mapping):
        if all(isinstance(k, str) for k in tree) and not (_MARKERS & set(tree)):
            return {k: encode(v, prefix, tensors) for k, v in tree.items()}
        return {_ITEMS: [[encode(k, prefix, tensors), encode(v, prefix, tensors)] for k, v in tree.items()]}
    if isinstance(tree, tuple):
        return {_TUPLE: [encode(v, prefix, tensors) for v in tree]}
    if isinstance(tree, list):
        return [encode(v, prefix, tensors) for v in tree]
    if isinstance(tree, float) and not math.isfinite(tree):
        return {_FLOAT: repr(tree)}  # strict JSON has no inf/nan
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise DataError(f"cannot store a value of type {type(tree).__name__} in a checkpoint")


def decode(tree: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(tree, dict):
        if _TENSOR in tree:
            key = tree[_TENSOR]
            if key not in tensors:
                raise DataError(f"checkpoint is missing tensor '{key}'")
            return tensors[key]
        if _ITEMS in tree:
            return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in tree[_ITEMS]}
        if _TUPLE in tree:
            return tuple(decode(v, tensors) for v in tree[_TUPLE])
        if _FLOAT in tree:
            return float(tree[_FLOAT])
        return {k: decode(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [decode(v, tensors) for v in tree]
    return tree


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def clone_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU copies of a model ``state_dict`` that safetensors accepts.

    Tied weights share storage, which safetensors rejects; each entry is cloned.
    """
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
