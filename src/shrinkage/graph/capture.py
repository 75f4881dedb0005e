"""Which capture builds a model's channel graph: ``torch.export`` or ``torch.fx``.

``torch.export`` (ATen ops, :mod:`shrinkage.graph.export_graph`) covers the models that
symbolic tracing cannot follow (Hugging Face transformers, most of timm) and resolves
in-place ops; ``torch.fx`` (:mod:`shrinkage.graph.builder`) keeps module boundaries, so
modules with a rule of their own (``nn.MultiheadAttention``, whose heads are removed as
units, and any ``leaf_modules`` a user declares) are seen whole. ``Capture.AUTO`` picks
fx for those models and export for the others, and falls back to the other capture when
the first one cannot capture the model or has no rule for one of its ops; the graph
records which capture was used.

Example inputs that do not fit the model (a wrong shape or dtype) raise
:class:`~shrinkage.errors.ExampleInputError` naming the module where they fail. The fx
capture finds it while recording; ``torch.export`` only reports the failing op, so when
export fails the model is run once eagerly under hooks that note the innermost module and
op running (:func:`eager_failure`). A capture that succeeds costs no extra run.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from shrinkage.errors import ExampleInputError, UnsupportedModuleError
from shrinkage.graph.builder import ChannelGraph, build_channel_graph
from shrinkage.graph.export_graph import ExportChannelGraph, build_export_graph
from shrinkage.graph.rules import default_rules
from shrinkage.layers import HeadPrunedAttention


class Capture(enum.Enum):
    """How :func:`capture_channel_graph` captures a model."""

    AUTO = "auto"
    EXPORT = "torch.export"
    FX = "torch.fx"


#: module types whose rule needs the module whole (fx sees them as one node)
MODULE_LEVEL_TYPES: tuple[type[nn.Module], ...] = (nn.MultiheadAttention, HeadPrunedAttention)


def capture_used(graph: ChannelGraph) -> Capture:
    return Capture.EXPORT if isinstance(graph, ExportChannelGraph) else Capture.FX


def capture_channel_graph(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    capture: Capture = Capture.AUTO,
    *,
    leaf_modules: tuple[type[nn.Module], ...] = (),
    allow_unknown: bool = False,
) -> ChannelGraph:
    """The channel graph of ``model`` on ``example_inputs`` (the model is left unchanged)."""
    from shrinkage.graph.aten_rules import default_aten_rules  # imports this package's rules

    def by_export() -> ChannelGraph:
        return build_export_graph(model, example_inputs, default_aten_rules(), allow_unknown=allow_unknown)

    def by_fx() -> ChannelGraph:
        return build_channel_graph(
            model, example_inputs, default_rules(), leaf_modules=leaf_modules, allow_unknown=allow_unknown
        )

    if capture is Capture.EXPORT:
        try:
            return by_export()
        except UnsupportedModuleError as exc:
            failure = eager_failure(model, example_inputs)
            if failure is None:
                raise  # the inputs fit: export itself cannot capture the model
            raise failure from exc
    if capture is Capture.FX:
        return by_fx()
    whole = leaf_modules + MODULE_LEVEL_TYPES
    order = (by_fx, by_export) if any(isinstance(m, whole) for m in model.modules()) else (by_export, by_fx)
    try:
        return order[0]()
    except ExampleInputError:
        raise  # the inputs are wrong for either capture
    except UnsupportedModuleError as first:
        try:
            return order[1]()
        except ExampleInputError:
            raise
        except UnsupportedModuleError as second:
            # neither capture got to run the inputs through the model: see whether they fit at all
            failure = eager_failure(model, example_inputs)
            if failure is not None:
                raise failure from second
            raise UnsupportedModuleError(f"{first} (and with the other capture: {second})") from second


class _FailingOp(TorchFunctionMode):
    """Notes the torch function that raised last, with its tensor arguments and the
    modules running at that moment (``stack``, kept by the module hooks)."""

    def __init__(self, stack: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.stack = stack
        self.failure: tuple[str, str, tuple[tuple[str, nn.Module], ...]] | None = None

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.failure = None  # a failure the model caught and recovered from is not the one
        try:
            return func(*args, **(kwargs or {}))
        except Exception:
            op = getattr(func, "__name__", str(func))
            self.failure = (op, _shapes((args, kwargs or {})), tuple(self.stack))
            raise


def _shapes(tree: Any, most: int = 4) -> str:
    """``float32[1, 4, 8, 8], float32[8, 3, 3, 3]``: the tensors among ``tree``'s leaves."""
    tensors = [t for t in pytree.tree_leaves(tree) if isinstance(t, Tensor)]
    shown = [f"{str(t.dtype).removeprefix('torch.')}[{', '.join(map(str, t.shape))}]" for t in tensors[:most]]
    return ", ".join(shown + (["..."] if len(tensors) > most else []))


@contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[tuple[str, nn.Module]]]:
    """The modules whose forward is running, outermost first, kept by hooks that are
    removed on the way out."""
    stack: list[tuple[str, nn.Module]] = []
    handles = []
    for name, module in model.named_modules():

        def enter(m: nn.Module, args: Any, name: str = name) -> None:
            stack.append((name, m))

        def leave(m: nn.Module, args: Any, out: Any) -> None:
            # its own entry goes, with any that an exception the model caught left above it
            last = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][1] is m), None)
            if last is not None:
                del stack[last:]

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def eager_failure(model: nn.Module, example_inputs: tuple[Any, ...]) -> ExampleInputError | None:
    """Where ``example_inputs`` fail in an eager run of ``model`` (in eval mode, without
    gradients, on copies of the inputs; the model is left as it was): the innermost module
    running and the op that raised, or None when the run succeeds."""
    flags = [(m, m.training) for m in model.modules()]
    inputs = pytree.tree_map(lambda x: x.clone() if isinstance(x, Tensor) else x, example_inputs)
    with _module_stack(model) as stack:
        mode = _FailingOp(stack)
        try:
            model.eval()
            with torch.no_grad(), mode:
                model(*inputs)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            running = mode.failure[2] if mode.failure is not None else tuple(stack)
            name, module = running[-1] if running and running[-1][0] else ("", model)
            where = f"module '{name}' ({type(module).__name__})" if name else f"{type(model).__name__}.forward"
            at = f" at {mode.failure[0]}({mode.failure[1]})" if mode.failure is not None else ""
            return ExampleInputError(f"the example inputs fail in {where}{at}: {first}")
        finally:
            for m, flag in flags:
                m.training = flag
    return None
