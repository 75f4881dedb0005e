"""The non-structured baseline: element-wise sparsity executed by sparse kernels.

SSL's claim is that structured sparsity pays off in speed where element-wise sparsity
at the same fraction of zeros does not. Comparing the two needs

* a model with scattered zeros at a *matched* sparsity: :func:`magnitude_sparsify`
  zeroes the smallest-magnitude weights of each named layer to an exact fraction, with
  the per-layer fractions read off the structured model by :func:`weight_sparsity`
  (training with :class:`shrinkage.penalties.L1` is the true L1 baseline; magnitude
  pruning is its stand-in when only the speed at a given sparsity is compared);
* that model executed with the zeros skipped: :func:`sparsify` swaps each sparse enough
  ``nn.Linear`` / ``nn.Conv2d`` for :class:`~shrinkage.layers.sparse.SparseLinear` /
  :class:`~shrinkage.layers.sparse.SparseConv2d`.

Saving a sparsified model with ``shrinkage.save`` is not supported (its safetensors
layout holds dense tensors); ``state_dict`` / ``load_state_dict`` work.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from shrinkage.errors import ConfigError, UnsupportedModuleError
from shrinkage.layers.sparse import SparseConv2d, SparseLinear

log = logging.getLogger(__name__)

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _replaceable(module: nn.Module) -> bool:
    # exact types: subclasses such as MultiheadAttention's out_proj are read by their
    # owner as dense weights, so swapping them would break the owner
    return type(module) in (nn.Linear, nn.Conv2d)


def _sparsity(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / max(1, weight.numel())


def weight_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights of every Linear / Conv layer, by qualified name.

    Biases are not counted. Passing the result of a structured (SSL) model, before
    compaction, to :func:`magnitude_sparsify` on the dense model gives the matched baseline.
    """
    return {name: _sparsity(m.weight) for name, m in model.named_modules() if isinstance(m, _WEIGHTED)}


def sparsify(
    model: nn.Module,
    min_sparsity: float = 0.5,
    layers: Sequence[str] | None = None,
    linear_layout: torch.layout = torch.sparse_csr,
    conv_layout: torch.layout = torch.sparse_coo,
) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` / ``nn.Conv2d`` layers with at least
    ``min_sparsity`` zero weights are replaced by their sparse forms (same outputs).

    ``layers``: shell-style globs of qualified module names; only matching layers are
    considered (each pattern must match some Linear or Conv2d). Without ``layers``,
    grouped convolutions are skipped (no sparse form); a grouped conv named explicitly
    is an error. The layouts default to the faster format of each layer kind on CPU
    (see :mod:`shrinkage.layers.sparse`).
    """
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) or not 0 <= min_sparsity <= 1:
        raise ConfigError(f"sparsify: min_sparsity must be a number in [0, 1], got {min_sparsity!r}")
    if isinstance(layers, str):
        raise ConfigError(f"sparsify: layers must be a list of name patterns, got the string {layers!r}")
    out = copy.deepcopy(model)
    candidates = [(name, m) for name, m in out.named_modules() if name and _replaceable(m)]
    if layers is not None:
        for pattern in layers:
            if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in candidates):
                raise ConfigError(f"sparsify: layers pattern {pattern!r} matches no nn.Linear or nn.Conv2d module")
        chosen = [(n, m) for n, m in candidates if any(fnmatch.fnmatchcase(n, p) for p in layers)]
    else:
        chosen = [(n, m) for n, m in candidates if not (isinstance(m, nn.Conv2d) and m.groups != 1)]
    replaced = 0
    for name, module in chosen:
        if _sparsity(module.weight) < min_sparsity:
            continue
        sparse: nn.Module
        if isinstance(module, nn.Conv2d):
            sparse = SparseConv2d(module, layout=conv_layout, name=name)
        else:
            sparse = SparseLinear(module, layout=linear_layout, name=name)
        out.set_submodule(name, sparse)
        replaced += 1
    log.info("sparsify: %d of %d layers stored sparse (min sparsity %.2f)", replaced, len(chosen), min_sparsity)
    return out


def magnitude_sparsify(model: nn.Module, sparsity_per_layer: Mapping[str, float]) -> nn.Module:
    """A copy of ``model`` in which each named layer's smallest-magnitude weights are zero,
    exactly ``round(sparsity * numel)`` of them (ties broken by position, so the count is
    exact even among equal magnitudes); other layers and every bias are unchanged.

    Zeros already present count towards the target (they are the smallest magnitudes);
    a layer already sparser than its target is an error, since reaching it exactly would
    mean reviving weights.
    """
    modules = dict(model.named_modules())
    for name, fraction in sparsity_per_layer.items():
        module = modules.get(name) if name else None
        if module is None:
            raise ConfigError(f"magnitude_sparsify: the model has no module named {name!r}")
        if not isinstance(module, _WEIGHTED):
            raise UnsupportedModuleError(
                f"magnitude_sparsify: module '{name}' ({type(module).__name__}) is not a Linear or Conv layer"
            )
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ConfigError(f"magnitude_sparsify: sparsity of '{name}' must be a number in [0, 1], got {fraction!r}")
        already = int((module.weight == 0).sum())
        target = round(fraction * module.weight.numel())
        if already > target:
            raise ConfigError(
                f"magnitude_sparsify: '{name}' already has {already} zero weights, more than the target "
                f"{target} ({fraction:.4g} of {module.weight.numel()})"
            )
    out = copy.deepcopy(model)
    new_modules = dict(out.named_modules())
    with torch.no_grad():
        for name, fraction in sparsity_per_layer.items():
            weight = new_modules[name].weight
            k = round(fraction * weight.numel())
            if k == 0:
                continue
            order = torch.sort(weight.detach().abs().reshape(-1), stable=True).indices[:k]
            drop = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
            drop[order] = True
            weight.masked_fill_(drop.view(weight.shape), 0.0)
    return out


def matched_sparsity(structured: nn.Module, dense: nn.Module, layers: Sequence[str] | None = None) -> nn.Module:
    """``dense`` magnitude-pruned to the per-layer weight sparsity of ``structured`` (same
    architecture, zeros not yet compacted away): the element-wise model to time against the
    compacted structured one. ``layers`` restricts it to those qualified names."""
    levels = weight_sparsity(structured)
    if layers is not None:
        missing = [n for n in layers if n not in levels]
        if missing:
            raise ConfigError(f"matched_sparsity: {missing[0]!r} is not a Linear or Conv layer of the structured model")
        levels = {n: levels[n] for n in layers}
    levels = {n: s for n, s in levels.items() if s > 0}
    return magnitude_sparsify(dense, levels)
