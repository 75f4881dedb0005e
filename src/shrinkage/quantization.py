"""Int8 post-training quantization of a (compacted or factorized) model, with PyTorch's own tools.

:func:`quantize_int8` runs the PT2E flow of torchao (the x86 quantizer: uint8 activations
per tensor, int8 weights per output channel, BatchNorm folded into the convolutions):
capture with ``torch.export``, insert observers, run calibration batches, convert. With
``compile=True`` the result runs through ``torch.compile``, whose inductor backend
replaces the quantize/dequantize patterns by oneDNN int8 convolutions and matmuls
(``onednn.qconv_pointwise``, ``qconv2d_pointwise.binary`` with the residual add and ReLU
fused, ``qlinear_pointwise``).

Why this flow. Three flows run ResNet-20 dense, compacted (odd widths such as 12 or 7
channels) and factorized (each conv a k x k -> r pair then a 1 x 1 r -> out) with int8
kernels on an x86 CPU: this one; eager FX mode (``torch.ao.quantization.quantize_fx``
with the ``"x86"`` engine), deprecated in torch 2.14; and torchao's
``lower_pt2e_quantized_to_x86`` without ``torch.compile``, whose graph is fixed to the
example's batch size. This one was the fastest of the three at batch 1 and 64 and the
closest to the float logits; ``benchmarks/cifar_int8.py`` measures it side by side with
eager and compiled float (``results/cifar10/int8.json``). The PT2E conversion alone,
without a lowering, computes in float around quantize/dequantize steps and is slower
than the float model.

``compile=False`` returns the converted graph itself: the same int8 numbers (int8
weights, scales, zero points), computed by dequantizing to float around float
kernels. It is the quick way to check accuracy, not a fast model.

Requires torchao (``pip install "shrinkage[quant]"``), imported only when called.
Importing torchao's x86 quantizer registers its inductor passes for the whole process
(torchao does this on import).
"""

from __future__ import annotations

import contextlib
import importlib
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from shrinkage.errors import ShrinkageError

__all__ = ["FrozenCompiled", "MissingExtraError", "QuantizationError", "quantize_int8"]

Inputs = tuple[Any, ...]


class QuantizationError(ShrinkageError, RuntimeError):
    """The model cannot be captured, annotated or calibrated for int8 quantization."""


class MissingExtraError(ShrinkageError, ImportError):
    """An optional dependency of shrinkage is not installed."""


@dataclass(frozen=True)
class _Pt2e:
    """The torchao entry points the flow needs."""

    prepare: Any
    convert: Any
    quantizer: Any


def _torchao_pt2e() -> _Pt2e:
    """torchao's PT2E functions and a configured x86 quantizer, or one line saying how to install them."""
    try:
        flow: types.ModuleType = importlib.import_module("torchao.quantization.pt2e.quantize_pt2e")
        x86: types.ModuleType = importlib.import_module("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
    except ImportError:
        raise MissingExtraError(
            'quantize_int8 needs torchao, which is not installed: pip install "shrinkage[quant]"'
        ) from None
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    return _Pt2e(flow.prepare_pt2e, flow.convert_pt2e, quantizer)


def _as_inputs(batch: Any) -> Inputs:
    return batch if isinstance(batch, tuple) else (batch,)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _batch_dims(inputs: Inputs) -> tuple[Any, ...]:
    """Dim 0 of every tensor input may vary (``Dim.AUTO``: kept static where the model needs it)."""
    auto = torch.export.Dim.AUTO
    return tuple({0: auto} if _batched(x) else None for x in inputs)


def _batched(x: Any) -> bool:
    return isinstance(x, Tensor) and x.dim() >= 1


def _at_least_two(inputs: Inputs) -> Inputs:
    """A batch of 1 doubled: torch.export fixes every dimension of size 1 it sees."""
    return tuple(torch.cat([x, x]) if _batched(x) and x.shape[0] == 1 else x for x in inputs)


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.train(flag)


def _export(model: nn.Module, inputs: Inputs) -> torch.fx.GraphModule:
    """The model as an ATen graph, batch dimension left free.

    Strict (dynamo) capture first: it records one source per *call*, which the x86
    quantizer needs to find its conv-add-ReLU patterns; the non-strict capture names
    sources by module, so a module applied twice in ``forward`` (ResNet's shared ReLU)
    becomes one pattern with two outputs, which the quantizer refuses.
    """
    errors = []
    for strict in (True, False):
        try:
            with _eval(model), torch.no_grad():
                program = torch.export.export(
                    model, _at_least_two(inputs), dynamic_shapes=_batch_dims(inputs), strict=strict
                )
            return program.module()
        except Exception as error:  # any capture failure: try the other capture, then report the first
            errors.append(error)
    raise QuantizationError(
        f"quantize_int8: torch.export cannot capture {type(model).__name__} ({_first_line(errors[0])})"
    )


def _drop_unread_tensors(graph: torch.fx.GraphModule) -> None:
    """Delete parameters and buffers the converted graph no longer reads.

    Conversion folds BatchNorm into new int8 weights but leaves the original float
    weights attached; keeping them would make the saved state larger than the float model.
    """
    read = {node.target for node in graph.graph.nodes if node.op == "get_attr"}
    for name in [n for n, _ in graph.named_parameters()] + [n for n, _ in graph.named_buffers()]:
        if name in read:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = graph.get_submodule(owner_name) if owner_name else graph
        delattr(owner, leaf)


def _set_flag_only(self: nn.Module, mode: bool = True) -> nn.Module:
    self.training = mode
    return self


def _set_eval_flag(self: nn.Module) -> nn.Module:
    return _set_flag_only(self, False)


def _allow_mode_flags(graph: torch.fx.GraphModule) -> None:
    """Let ``train()``/``eval()`` set the flag without touching the graph.

    An exported graph refuses both calls (its ops were fixed at capture); the converted
    one computes inference whatever the flag says (BatchNorm folded, dropout captured in eval), and
    refusing would break every helper that puts a model in eval mode and back.
    """
    graph.train = types.MethodType(_set_flag_only, graph)  # type: ignore[method-assign]
    graph.eval = types.MethodType(_set_eval_flag, graph)  # type: ignore[method-assign]
    graph.training = False


class FrozenCompiled(nn.Module):
    """``module`` run through ``torch.compile`` with inductor's freezing on, for inference.

    Freezing treats the weights as constants: inductor folds them and prepacks them for
    oneDNN, and only its freezing passes lower the int8 quantize/dequantize patterns to
    int8 kernels. ``torch.compile(options={"freezing": True})`` does not reach those
    passes (torch 2.14), so each call switches the global flag on for its duration.
    Calls run without autograd (freezing applies only to inference); weights changed
    after the first call are not seen. Each batch size is compiled on its first call
    (tens of seconds cold) into a graph of static shapes: the dynamic-batch graph inductor
    makes otherwise failed its own stride assertion in the int8 conv lowering on a pruned
    ResNet-20 (torch 2.14) whose static graphs run. ``module`` holds the state.

    Compiled instances of one module class share torch._dynamo's recompile limit for
    their ``forward`` (``torch._dynamo.config.recompile_limit``, 8): past 8 batch sizes
    dynamo runs the graph eagerly (the same int8 numbers, without the int8 kernels).
    Each int8 graph has a ``forward`` of its own.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        # kept out of the module tree: its state is module's, under other names
        self.__dict__["_compiled"] = torch.compile(module, dynamic=False)

    def forward(self, *inputs: Any) -> Any:
        import torch._inductor.config as inductor_config

        before = inductor_config.freezing
        inductor_config.freezing = True  # set directly: config.patch costs ~3x more per call
        try:
            with torch.no_grad():
                return self.__dict__["_compiled"](*inputs)
        finally:
            inductor_config.freezing = before


def quantize_int8(
    model: nn.Module,
    example_inputs: Inputs | Tensor,
    calibration: Iterable[Inputs | Tensor],
    *,
    compile: bool = True,
) -> nn.Module:
    """An int8 copy of ``model`` (eval mode), calibrated on ``calibration``.

    ``model`` is captured with ``torch.export`` on ``example_inputs`` (dim 0 of every
    tensor input is left free, so any batch size runs), annotated by torchao's
    ``X86InductorQuantizer`` (default config: static, activations per tensor uint8,
    weights per channel int8, symmetric), then ``calibration`` is run through it:
    each item is one input batch (a tensor or a tuple of inputs), whose activations
    observers record to choose the activation scales, so it should look like real
    data (a few hundred unaugmented training images, not random noise). The model
    itself is left unchanged.

    Returns a :class:`FrozenCompiled` (``compile=True``: oneDNN int8 kernels on x86
    CPUs; compiled on ``example_inputs`` before returning, about 20 s cold, and again
    for each other batch size) or the converted
    ``torch.fx.GraphModule`` (``compile=False``: the same int8 numbers through float
    kernels, no speedup). Either's ``state_dict()`` holds the int8 weights, their
    scales and zero points, and the float biases, nothing else.

    Limits: inference only, CPU only; the quantizer's default recipe covers
    convolutions and linear layers (with a residual add and ReLU after them), mul, and
    the pooling, flattening and concatenation between them; anything else (LayerNorm,
    softmax, attention matmuls) stays float. The batch dimension is the only free one; an example batch of 1 is
    doubled for the capture (``torch.export`` fixes dimensions of size 1).

    Raises:
        MissingExtraError: torchao is not installed.
        QuantizationError: ``torch.export`` cannot capture the model, the quantizer
            cannot annotate its graph, ``calibration`` gave no batch, or (``compile=True``)
            inductor cannot lower the converted graph (it is compiled on
            ``example_inputs`` before returning).
    """
    pt2e = _torchao_pt2e()
    inputs = _as_inputs(example_inputs)
    graph = _export(model, inputs)
    name = type(model).__name__
    try:
        prepared = pt2e.prepare(graph, pt2e.quantizer)
    except Exception as error:  # the quantizer's pattern matching raises bare ValueErrors/AssertionErrors
        raise QuantizationError(
            f"quantize_int8: the x86 quantizer cannot annotate {name} ({_first_line(error)})"
        ) from None
    batches = 0
    with torch.no_grad():
        for batch in calibration:
            prepared(*_as_inputs(batch))
            batches += 1
    if batches == 0:
        raise QuantizationError(f"quantize_int8: calibration gave no batch for {name}; pass input batches")
    converted = pt2e.convert(prepared)
    _drop_unread_tensors(converted)
    _allow_mode_flags(converted)
    if not compile:
        return converted
    frozen = FrozenCompiled(converted)
    # compiled here, on the example, rather than at the caller's first call: inductor's int8
    # lowering can fail on a graph the conversion accepted, and that belongs to
    # quantize_int8's errors, not to some later forward pass
    try:
        frozen(*inputs)
    except Exception as error:  # inductor and dynamo raise many types; all mean "not lowered"
        raise QuantizationError(
            f"quantize_int8: inductor cannot lower the int8 graph of {name} to int8 kernels "
            f"({_first_line(error)}); compile=False gives the same int8 numbers on float kernels"
        ) from None
    return frozen
