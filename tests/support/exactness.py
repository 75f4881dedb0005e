"""The one check every compaction test makes: same outputs on fresh inputs, fewer parameters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import shrinkage
from shrinkage.compact import CompactOptions, max_output_difference

Inputs = tuple[Any, ...]


def fresh_like(inputs: Inputs, gen: torch.Generator, batch: int | None = None) -> Inputs:
    """New random values of the same kind: floats drawn again (with ``batch`` rows when
    given), integer tensors (token ids) drawn in the range the example used."""
    out: list[Any] = []
    for x in inputs:
        if not isinstance(x, Tensor):
            out.append(x)
            continue
        shape = (batch, *x.shape[1:]) if batch is not None and x.dim() >= 1 else tuple(x.shape)
        if x.is_floating_point():
            out.append(torch.randn(shape, generator=gen, dtype=x.dtype).to(x.device))
        else:
            high = int(x.max()) + 1 if x.numel() else 1
            out.append(torch.randint(0, max(high, 1), shape, generator=gen, dtype=x.dtype).to(x.device))
    return tuple(out)


def assert_compacts_exactly(
    model: nn.Module,
    example_inputs: Inputs | Tensor,
    *,
    fresh: Sequence[Inputs] | None = None,
    compact: Callable[[nn.Module, Inputs], nn.Module] | None = None,
    options: CompactOptions | None = None,
    rtol: float = 1e-5,
    fewer_params: bool = True,
    seed: int = 99,
) -> nn.Module:
    """Compact ``model`` on ``example_inputs`` and check the result against it on inputs it
    has never seen: ``fresh`` when given, else new random draws of the example's shapes
    and of another batch size. The tolerance is relative to the output scale (random
    BatchNorm statistics make logits of any size). With ``fewer_params`` the result must
    be strictly smaller; otherwise no larger. Returns the compacted model.

    ``compact`` replaces :func:`shrinkage.compact` (for instance a ``factorize`` call or a
    save/load round trip)."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    small = compact(model, example_inputs) if compact is not None else shrinkage.compact(model, example_inputs, options)
    if fresh is None:
        gen = torch.Generator().manual_seed(seed)
        first = next((x for x in example_inputs if isinstance(x, Tensor) and x.dim() >= 1), None)
        batches = [None] + ([first.shape[0] + 3] if first is not None else [])
        fresh = [fresh_like(example_inputs, gen, batch) for batch in batches]
    for inputs in fresh:
        with torch.no_grad():
            reference = _eval_output(model, inputs)
        scale = max(_scale(reference), 1.0)
        diff = max_output_difference(model, small, inputs)
        assert diff <= rtol * scale, f"compacted output differs by {diff:.3g} (scale {scale:.3g})"
    before, after = _params(model), _params(small)
    assert after < before if fewer_params else after <= before, f"parameters {before} -> {after}"
    return small


def _eval_output(model: nn.Module, inputs: Inputs) -> Any:
    flags = [(m, m.training) for m in model.modules()]
    try:
        return model.eval()(*inputs)
    finally:
        for m, flag in flags:
            m.training = flag


def _scale(y: Any) -> float:
    if isinstance(y, Tensor):
        return float(y.abs().max()) if y.numel() and y.is_floating_point() else 0.0
    if isinstance(y, dict):
        return max((_scale(v) for v in y.values()), default=0.0)
    if isinstance(y, (tuple, list)):
        return max((_scale(v) for v in y), default=0.0)
    return max((_scale(v) for v in vars(y).values()), default=0.0) if hasattr(y, "__dict__") else 0.0


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def saved_and_loaded(base: nn.Module, path: Path) -> Callable[[nn.Module, Inputs], nn.Module]:
    """``compact=`` for :func:`assert_compacts_exactly`: compact, save to ``path`` and load
    into ``base`` (a fresh instance with other random weights: everything must come from
    the file)."""

    def run(model: nn.Module, inputs: Inputs) -> nn.Module:
        shrinkage.save(shrinkage.compact(model, inputs), path)
        return shrinkage.load(path, base)

    return run
