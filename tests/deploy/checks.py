"""The deployment checks: a model's outputs through ONNX + onnxruntime, ``torch.export`` and
``torch.compile`` equal its eager outputs on inputs the export never saw.

The callers import onnx and onnxruntime with ``pytest.importorskip`` first.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.export import Dim

Inputs = tuple[Tensor, ...]

#: largest difference allowed, relative to the output's scale (at least 1)
RTOL = 1e-5


def compile_backend() -> str:
    """``inductor`` where a C++ compiler exists (it compiles CPU kernels with one), else
    ``aot_eager``, which still traces the model through dynamo and AOTAutograd."""
    found = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++") or shutil.which("c++")
    return "inductor" if found else "aot_eager"


def leaves(y: Any) -> list[Tensor]:
    """The output tensors of ``y`` (a tensor, or tuples / lists of them), in order."""
    if isinstance(y, Tensor):
        return [y]
    if isinstance(y, (tuple, list)):
        return [t for v in y for t in leaves(v)]
    raise TypeError(f"unexpected output type {type(y).__name__}")


def eager(model: nn.Module, inputs: Inputs) -> list[Tensor]:
    with torch.no_grad():
        return leaves(model.eval()(*inputs))


def assert_same(got: Sequence[Tensor], want: Sequence[Tensor], what: str) -> None:
    """Same number, shapes and values of outputs, up to ``RTOL`` of the output scale."""
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    scale = max([float(w.abs().max()) for w in want if w.numel()] + [1.0])
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert tuple(g.shape) == tuple(w.shape), (
            f"{what}: output {i} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        )
        diff = float((g.float() - w.float()).abs().max()) if w.numel() else 0.0
        assert diff <= RTOL * scale, f"{what}: output {i} differs by {diff:.3g} (scale {scale:.3g})"


def batch_dims(example: Inputs, multiples: Sequence[int] | None = None) -> tuple[dict[int, Any], ...]:
    """Dim 0 of every input dynamic: the batch, times ``multiples[i]`` for input ``i`` (an
    attention mask per sample and head has ``heads`` rows per sample)."""
    batch = Dim("batch", min=1, max=1024)
    return tuple({0: batch if k == 1 else k * batch} for k in (multiples or [1] * len(example)))


def check_onnx(model: nn.Module, example: Inputs, fresh: Sequence[Inputs], path: Path,
               dynamic: tuple[dict[int, Any], ...] | None) -> None:  # fmt: skip
    """Export with the dynamo-based exporter (``dynamo=True``; the TorchScript one cannot
    trace a zero-width layer) with the ``dynamic`` dims, and compare onnxruntime's CPU
    outputs on ``fresh`` inputs."""
    import onnxruntime as ort

    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        torch.onnx.export(model, example, str(path), dynamo=True, dynamic_shapes=dynamic)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(example), f"the ONNX graph takes {names}, expected {len(example)} inputs"
    for inputs in fresh:
        got = session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
        assert_same(
            [torch.from_numpy(g) for g in got], eager(model, inputs), f"onnxruntime, batch {inputs[0].shape[0]}"
        )


def check_export(model: nn.Module, example: Inputs, fresh: Sequence[Inputs],
                 dynamic: tuple[dict[int, Any], ...] | None) -> None:  # fmt: skip
    """``torch.export.export`` with the ``dynamic`` dims, then the exported module on ``fresh``."""
    model.eval()
    program = torch.export.export(model, example, dynamic_shapes=dynamic)
    exported = program.module()
    for inputs in fresh:
        with torch.no_grad():
            got = leaves(exported(*inputs))
        assert_same(got, eager(model, inputs), f"torch.export, batch {inputs[0].shape[0]}")


def check_compile(model: nn.Module, inputs: Inputs) -> None:
    """``torch.compile`` (backend from :func:`compile_backend`), called once on ``inputs``."""
    model.eval()
    compiled = torch.compile(model, backend=compile_backend())
    with torch.no_grad():
        got = leaves(compiled(*inputs))
    assert_same(got, eager(model, inputs), f"torch.compile ({compile_backend()})")
