"""Every layer type compaction can put into a model runs in deployment with equal outputs.

For each type, a small model whose compaction (or ``factorize`` / ``sparsify``) creates it
(the form forced where the fewest-MAC choice would not pick it). All of them side by side
in one model are exported to ONNX (the dynamo-based exporter, ``dynamo=True``, with a
dynamic batch; and with the TorchScript-based exporter, the default before torch 2.9)
and run in onnxruntime on the CPU, and compiled with ``torch.compile``;
each is exported with ``torch.export`` (dynamic batch). Outputs on fresh inputs, of the
example's batch size and a larger one, equal the eager model's up to 1e-5 of each
output's scale. One export and one compilation for all: each costs seconds of fixed
overhead.

``torch.compile`` runs with ``backend="aot_eager"`` (dynamo capture and AOTAutograd,
kernels left to eager PyTorch) in the default suite. Inductor works too where a C++
compiler is found (it builds the CPU kernels with it), but compiling these models takes
about 40 s on a loaded 2-core machine, so that test is marked ``slow``.

The layer types, and what makes them:

* ``ZeroWidthConv`` with no output channels and with no input channels, and
  ``nn.Identity`` for a BatchNorm of no channels: a residual branch whose weights are all
  zero (SSL's depth), with an identity and with a strided conv shortcut;
* ``SelectInputs`` in front of a narrower ``nn.Linear``: input features no neuron reads;
* ``SelectInputs`` in front of a narrower ``nn.Conv2d``: input channels of an image no
  filter reads (form ``selected-inputs``);
* ``CroppedConv2d``: a kernel border zero everywhere, cut symmetrically (the conv keeps its
  own padding) and asymmetrically (``F.pad``, negative where it crops; form
  ``cropped-kernel``, here behind a ``SelectInputs``);
* ``LoweredConv2d``: im2col + GEMM over the kept filter-shape columns (form ``lowered-gemm``);
* ``HeadPrunedAttention``: heads removed, with the attention weights computed (softmax
  path) and a key padding mask, through ``scaled_dot_product_attention`` with a per-head
  3-D mask of the original heads, and with no head left (the output bias alone);
* ``nn.Linear`` with no outputs and with no inputs: an MLP sub-block whose neurons are all
  zero;
* ``nn.Sequential(project, expand)`` of ``nn.Conv2d`` and of ``nn.Linear``
  (``factorize``, form ``two-layers``) and ``nn.Sequential(product)`` (form
  ``dense-product``);
* ``SparseLinear`` (CSR) and ``SparseConv2d`` (COO) from ``sparsify``: exported, they
  scatter their non-zeros into a dense weight (ONNX has no sparse product; see
  :mod:`shrinkage.layers.sparse`);
* smaller plain ``nn.Conv2d``, ``nn.Linear`` and ``nn.BatchNorm2d``: in every model here,
  and in the whole models of ``test_model_export.py``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from support.exactness import fresh_like
from support.sparsity import randomize_norm_stats
from torch import Tensor, nn

import shrinkage
from shrinkage.compact import CompactOptions, FormChoice, FormPolicy, sparsify
from shrinkage.compact.choice import Candidate, CandidateCost
from shrinkage.layers import (
    CroppedConv2d,
    HeadPrunedAttention,
    LoweredConv2d,
    SelectInputs,
    SparseConv2d,
    SparseLinear,
    ZeroWidthConv,
)
from shrinkage.zoo.resnet_cifar import BasicBlock

from .checks import (
    Dynamic,
    Inputs,
    batch_dims,
    check_compile,
    check_export,
    check_onnx,
    eager,
    has_cpp_compiler,
    leaves,
)


@dataclass(frozen=True)
class Prefer(FormPolicy):
    """Picks the named form of every layer where it is a candidate."""

    form: str
    label: ClassVar[str] = "preferred in a test"

    def choose(self, layer: str, candidates: Sequence[Candidate], x: Tensor, device: torch.device) -> FormChoice:
        pick = next((c for c in candidates if c.form == self.form), candidates[0])
        costs = tuple(CandidateCost(c.form, c.macs, None) for c in candidates)
        return FormChoice(layer, pick.form, self.label, tuple(x.shape), costs)


@dataclass(frozen=True)
class Case:
    """A deployable model, the inputs it was built on and the layer types it must hold;
    dim 0 of input ``i`` is the batch times ``per_sample[i]`` (default: every input 1)."""

    model: nn.Module
    example: Inputs
    holds: tuple[type[nn.Module], ...]
    per_sample: tuple[int, ...] = ()

    @property
    def multiples(self) -> tuple[int, ...]:
        return self.per_sample or (1,) * len(self.example)


def _compacted(model: nn.Module, example: Inputs, form: str | None = None) -> nn.Module:
    options = CompactOptions(choose_by=Prefer(form)) if form else None
    return shrinkage.compact(model.eval(), example, options).eval()


def _removed_branches() -> Case:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), BasicBlock(4, 4), BasicBlock(4, 6, stride=2)).eval()
    randomize_norm_stats(model, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for block in (model[1], model[2]):
            block.conv1.weight.zero_()
            block.conv2.weight.zero_()
    x = (torch.randn(2, 3, 8, 8),)
    return Case(_compacted(model, x), x, (ZeroWidthConv, nn.Identity))


def _selected_features() -> Case:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight[:, [1, 4, 5, 9]] = 0
    x = (torch.randn(2, 12),)
    return Case(_compacted(model, x, "selected-inputs"), x, (SelectInputs,))


def _conv_model(seed: int, zero: Callable[[Tensor], None], padding: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(conv=nn.Conv2d(4, 6, 5, padding=padding), relu=nn.ReLU(), head=nn.Conv2d(6, 3, 1))
    )
    with torch.no_grad():
        zero(model.conv.weight)
    return model.eval()


def _asymmetric(w: Tensor) -> None:
    """Input channel 1, the top kernel row, the two right columns and a third of the rest."""
    w[:, 1] = 0
    w[:, :, 0, :] = 0
    w[:, :, :, -2:] = 0
    cols = w.view(w.shape[0], -1)
    cols[:, torch.randperm(cols.shape[1], generator=torch.Generator().manual_seed(0))[: cols.shape[1] // 3]] = 0


def _ring(w: Tensor) -> None:
    w[:, :, [0, -1], :] = 0
    w[:, :, :, [0, -1]] = 0


def _channel(w: Tensor) -> None:
    w[:, 2] = 0


def _conv_form(form: str, zero: Callable[[Tensor], None], holds: type[nn.Module], padding: int = 2) -> Case:
    x = (torch.randn(2, 4, 9, 9),)
    return Case(_compacted(_conv_model(2, zero, padding), x, form), x, (holds,))


class _Attention(nn.Module):
    """Three attention layers as a transformer calls them, then an MLP sub-block."""

    def __init__(self, dim: int = 8, heads: int = 4, hidden: int = 12) -> None:
        super().__init__()
        self.weighted = nn.MultiheadAttention(dim, heads, batch_first=True)  # need_weights defaults to True
        self.fused = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.empty = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor, padding: Tensor, mask: Tensor) -> Tensor:
        x = x + self.weighted(x, x, x, key_padding_mask=padding)[0]
        x = x + self.fused(x, x, x, attn_mask=mask, need_weights=False)[0]
        x = x + self.empty(x, x, x, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(x)))


def _attention() -> Case:
    torch.manual_seed(3)
    model = _Attention().eval()
    e, d = 8, 2
    with torch.no_grad():
        model.weighted.in_proj_weight[2 * e + d : 2 * e + 2 * d] = 0  # value rows of head 1
        model.weighted.in_proj_bias[2 * e + d : 2 * e + 2 * d] = 0
        model.fused.out_proj.weight[:, 2 * d : 3 * d] = 0  # output columns of head 2
        model.empty.out_proj.weight.zero_()  # every head
        model.fc1.weight.zero_()  # every neuron: GELU(0) = 0 reaches fc2
        model.fc1.bias.zero_()
    n, length = 2, 5
    padding = torch.zeros(n, length, dtype=torch.bool)
    padding[:, -1] = True
    mask = torch.randn(n * 4, length, length)  # per (sample, original head)
    x = (torch.randn(n, length, e), padding, mask)
    return Case(_compacted(model, x), x, (HeadPrunedAttention,), per_sample=(1, 1, 4))


def _factorizable() -> nn.Module:
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()


def _factorized(form: str) -> Case:
    x = (torch.randn(2, 3, 8, 8),)
    model = shrinkage.factorize(_factorizable(), 0.6, example_inputs=x, choose_by=Prefer(form)).eval()
    return Case(model, x, (nn.Sequential,))


def _sparse() -> Case:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 10)).eval()
    with torch.no_grad():
        for layer in (model[0], model[3]):
            layer.weight[torch.rand(layer.weight.shape) < 0.7] = 0
    x = (torch.randn(2, 3, 8, 8),)
    return Case(sparsify(model, 0.5), x, (SparseConv2d, SparseLinear))


BUILDERS: dict[str, Callable[[], Case]] = {
    "zero-width-conv": _removed_branches,
    "select-features": _selected_features,
    "select-channels": lambda: _conv_form("selected-inputs", _channel, SelectInputs),
    "cropped-symmetric": lambda: _conv_form("cropped-kernel", _ring, CroppedConv2d),
    "cropped-asymmetric": lambda: _conv_form("cropped-kernel", _asymmetric, CroppedConv2d, padding=1),
    "lowered-gemm": lambda: _conv_form("lowered-gemm", _asymmetric, LoweredConv2d),
    "head-pruned-attention": _attention,
    "two-layers": lambda: _factorized("two-layers"),
    "dense-product": lambda: _factorized("dense-product"),
    "sparse": _sparse,
}


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return {name: build() for name, build in BUILDERS.items()}


def _padding(shape: torch.Size, gen: torch.Generator) -> Tensor:
    """A random key padding mask that leaves every sequence its first position."""
    pad = torch.rand(shape, generator=gen) < 0.3
    pad[:, 0] = False
    return pad


def _fresh(case: Case) -> list[Inputs]:
    """New inputs of the example's batch size and of a larger one."""
    gen = torch.Generator().manual_seed(7)
    batch = case.example[0].shape[0]
    inputs = [
        tuple(fresh_like((x,), gen, batch=n * k)[0] for x, k in zip(case.example, case.multiples, strict=True))
        for n in (batch, batch + 3)
    ]  # fmt: skip
    return [tuple(_padding(x.shape, gen) if x.dtype == torch.bool else x for x in i) for i in inputs]


def _dynamic(case: Case) -> Dynamic:
    return batch_dims(case.example, case.multiples)


def test_each_case_holds_its_layer_types(cases: dict[str, Case]) -> None:
    for name, case in cases.items():
        types = {type(m) for m in case.model.modules()}
        missing = [t.__name__ for t in case.holds if t not in types]
        assert not missing, f"{name}: compaction made no {missing}"
    zero_width = [m for m in cases["zero-width-conv"].model.modules() if isinstance(m, ZeroWidthConv)]
    widths = {(m.in_channels == 0, m.out_channels == 0) for m in zero_width}
    assert widths == {(True, False), (False, True)}
    attention = [m for m in cases["head-pruned-attention"].model.modules() if isinstance(m, HeadPrunedAttention)]
    assert sorted(m.num_heads for m in attention) == [0, 3, 3]
    mlp = cases["head-pruned-attention"].model
    assert (mlp.fc1.out_features, mlp.fc2.in_features) == (0, 0)
    factorized = cases["two-layers"].model
    assert [type(m[0]) for m in (factorized[0], factorized[3])] == [nn.Conv2d, nn.Linear]
    assert list(factorized[0]._modules) == ["project", "expand"]
    assert list(cases["dense-product"].model[0]._modules) == ["product"]


class _All(nn.Module):
    """Every case side by side: one export or compilation covers every layer type (each
    costs seconds of fixed overhead, so one per case would not fit the suite's time)."""

    def __init__(self, cases: dict[str, Case]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(case.model for case in cases.values())
        self.arity = [len(case.example) for case in cases.values()]

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        outputs: list[Tensor] = []
        start = 0
        for part, arity in zip(self.parts, self.arity, strict=True):
            outputs += leaves(part(*inputs[start : start + arity]))
            start += arity
        return tuple(outputs)


@dataclass(frozen=True)
class Together:
    """All cases as one model, with its example, fresh inputs, dynamic dims and the name of
    the case each output comes from."""

    model: nn.Module
    example: Inputs
    fresh: list[Inputs]
    dynamic: Dynamic
    labels: list[str]


@pytest.fixture(scope="module")
def together(cases: dict[str, Case]) -> Together:
    fresh = [_fresh(case) for case in cases.values()]
    labels = [f"{name} output {i}" for name, case in cases.items() for i in range(len(eager(case.model, case.example)))]
    example = tuple(x for case in cases.values() for x in case.example)
    multiples = tuple(k for case in cases.values() for k in case.multiples)
    return Together(
        _All(cases).eval(), example, [tuple(x for f in fresh for x in f[i]) for i in range(2)],
        (batch_dims(example, multiples),), labels,  # one entry: forward takes *inputs
    )  # fmt: skip


def test_onnxruntime_gives_the_same_outputs(together: Together, tmp_path) -> None:
    t = together
    check_onnx(t.model, t.example, t.fresh, tmp_path / "layers.onnx", t.dynamic, t.labels)


def test_the_torchscript_onnx_exporter_gives_the_same_outputs(together: Together, tmp_path) -> None:
    """The exporter ``torch.onnx.export`` uses by default before torch 2.9 (the library
    supports torch >= 2.4)."""
    t = together
    check_onnx(t.model, t.example, t.fresh, tmp_path / "layers.onnx", t.dynamic, t.labels, dynamo=False)


@pytest.mark.parametrize("name", BUILDERS)
def test_torch_export_gives_the_same_outputs(name: str, cases: dict[str, Case]) -> None:
    case = cases[name]
    check_export(case.model, case.example, _fresh(case), _dynamic(case))


def test_torch_compile_gives_the_same_outputs(together: Together) -> None:
    check_compile(together.model, together.fresh[0], "aot_eager", together.labels)


@pytest.mark.slow
@pytest.mark.skipif(not has_cpp_compiler(), reason="inductor builds its CPU kernels with a C++ compiler; none found")
def test_torch_compile_with_inductor_gives_the_same_outputs(together: Together) -> None:
    check_compile(together.model, together.fresh[0], "inductor", together.labels)


def _pruned(layer: nn.Module, seed: int) -> nn.Module:
    with torch.no_grad():
        layer.weight[torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(seed)) < 0.6] = 0
    return layer


def test_exported_sparse_layers_follow_a_loaded_or_assigned_weight() -> None:
    """The exported graph reads the non-zeros kept beside the sparse weight: they must be
    those of a state dict loaded with another pattern, or of a weight assigned later."""
    torch.manual_seed(6)
    linear = SparseLinear(_pruned(nn.Linear(6, 4), 0))
    linear.load_state_dict(SparseLinear(_pruned(nn.Linear(6, 4), 1)).state_dict())
    conv = SparseConv2d(_pruned(nn.Conv2d(2, 3, 3), 2))
    conv.weight = SparseConv2d(_pruned(nn.Conv2d(2, 3, 3), 3)).weight
    for layer, x in ((linear, torch.randn(2, 6)), (conv, torch.randn(2, 2, 5, 5))):
        fresh = [(torch.randn(x.shape[0] + 3, *x.shape[1:]),)]
        check_export(layer, (x,), fresh, batch_dims((x,)))
