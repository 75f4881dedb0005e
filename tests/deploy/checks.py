"""The deployment checks: a model's outputs through ONNX + onnxruntime, ``torch.export`` and
``torch.compile`` equal its eager outputs on inputs the export never saw.

The ONNX check skips its test where onnx, onnxscript or onnxruntime is not installed.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.export import Dim

Inputs = tuple[Tensor, ...]
#: ``dynamic_shapes`` of ``torch.export`` / ``torch.onnx.export``: one entry per argument
Dynamic = tuple[Any, ...]

#: largest difference allowed, relative to the output's scale (at least 1)
RTOL = 1e-5


def has_cpp_compiler() -> bool:
    """Whether inductor can build CPU kernels here (it compiles them with a C++ compiler)."""
    return bool(shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++") or shutil.which("c++"))


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


def assert_same(got: Sequence[Tensor], want: Sequence[Tensor], what: str, labels: Sequence[str] | None = None) -> None:
    """Same number, shapes and values of outputs, each up to ``RTOL`` of its own scale;
    ``labels`` name the outputs in a failure (default: their index)."""
    assert len(got) == len(want), f"{what}: {len(got)} outputs, expected {len(want)}"
    labels = labels or [f"output {i}" for i in range(len(want))]
    for label, g, w in zip(labels, got, want, strict=True):
        assert tuple(g.shape) == tuple(w.shape), (
            f"{what}: {label} has shape {tuple(g.shape)}, expected {tuple(w.shape)}"
        )
        scale = max(float(w.abs().max()) if w.numel() else 0.0, 1.0)
        diff = float((g.float() - w.float()).abs().max()) if w.numel() else 0.0
        assert diff <= RTOL * scale, f"{what}: {label} differs by {diff:.3g} (scale {scale:.3g})"


def batch_dims(example: Inputs, multiples: Sequence[int] | None = None) -> tuple[dict[int, Any], ...]:
    """Dim 0 of every input dynamic: the batch, times ``multiples[i]`` for input ``i`` (an
    attention mask per sample and head has ``heads`` rows per sample)."""
    batch = Dim("batch", min=1, max=1024)
    return tuple({0: batch if k == 1 else k * batch} for k in (multiples or [1] * len(example)))


def check_onnx(
    model: nn.Module, example: Inputs, fresh: Sequence[Inputs], path: Path, dynamic: Dynamic,
    labels: Sequence[str] | None = None, *, dynamo: bool = True,
) -> None:  # fmt: skip
    """Export to ONNX and compare onnxruntime's CPU outputs on ``fresh`` inputs.

    ``dynamo``: the torch.export-based exporter (the default from torch 2.9), with the
    ``dynamic`` dims; else the TorchScript-based one (the default before), with dim 0 of
    every input dynamic when ``dynamic`` is given."""
    for needed in ("onnx", "onnxruntime") + (("onnxscript",) if dynamo else ()):  # dynamo's is written in onnxscript
        pytest.importorskip(needed)
    import onnxruntime as ort  # type: ignore[import-untyped]

    model.eval()
    inputs = [f"input{i}" for i in range(len(example))]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporters' notes on their own internals and deprecation
        if dynamo:
            torch.onnx.export(model, example, str(path), dynamo=True, dynamic_shapes=dynamic)
        else:
            axes = {name: {0: f"rows{i}"} for i, name in enumerate(inputs)} if dynamic is not None else None
            torch.onnx.export(model, example, str(path), dynamo=False, input_names=inputs, dynamic_axes=axes)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(example), f"the ONNX graph takes {names}, expected {len(example)} inputs"
    what = f"onnxruntime ({'dynamo' if dynamo else 'TorchScript'} exporter)"
    for x in fresh:
        got = session.run(None, {n: t.numpy() for n, t in zip(names, x, strict=True)})
        assert_same([torch.from_numpy(g) for g in got], eager(model, x), f"{what}, batch {x[0].shape[0]}", labels)


def check_export(model: nn.Module, example: Inputs, fresh: Sequence[Inputs], dynamic: Dynamic) -> None:
    """``torch.export.export`` with the ``dynamic`` dims, then the exported module on ``fresh``."""
    model.eval()
    program = torch.export.export(model, example, dynamic_shapes=dynamic)
    exported = program.module()
    for inputs in fresh:
        with torch.no_grad():
            got = leaves(exported(*inputs))
        assert_same(got, eager(model, inputs), f"torch.export, batch {inputs[0].shape[0]}")


def check_compile(model: nn.Module, inputs: Inputs, backend: str, labels: Sequence[str] | None = None) -> None:
    """``torch.compile`` with ``backend``, called once on ``inputs``."""
    model.eval()
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        got = leaves(compiled(*inputs))
    assert_same(got, eager(model, inputs), f"torch.compile ({backend})", labels)
