"""Non-structured sparse layers and the matched-sparsity baseline (shrinkage.compact.sparse).

Exactness is always checked on inputs drawn after the layer was built, against the dense
layer it came from. Saving with ``shrinkage.save`` is out of scope for these layers (its
safetensors layout is dense); the state tests cover ``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from shrinkage.compact.sparse import magnitude_sparsify, matched_sparsity, sparsify, weight_sparsity
from shrinkage.errors import ConfigError, ShrinkageError, UnsupportedModuleError
from shrinkage.layers.sparse import SparseConv2d, SparseLinear
from shrinkage.zoo import LeNet, resnet20

LAYOUTS = [torch.sparse_csr, torch.sparse_coo]
ATOL = 1e-5


def _prune_randomly_(module: nn.Module, fraction: float, gen: torch.Generator) -> None:
    with torch.no_grad():
        module.weight[torch.rand(module.weight.shape, generator=gen) < fraction] = 0


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------- layers


@pytest.mark.parametrize("layout", LAYOUTS, ids=["csr", "coo"])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_matches_dense_on_fresh_inputs(layout, bias):
    gen = torch.Generator().manual_seed(0)
    dense = nn.Linear(37, 11, bias=bias)
    _prune_randomly_(dense, 0.8, gen)
    sparse = SparseLinear(dense, layout=layout)
    assert sparse.weight.layout == layout
    assert sparse.nnz == int((dense.weight != 0).sum())
    for shape in [(5, 37), (1, 37), (2, 3, 37), (0, 37)]:
        x = torch.randn(shape, generator=gen)
        got = sparse(x)
        assert got.shape == dense(x).shape
        torch.testing.assert_close(got, dense(x), atol=ATOL, rtol=0)
    torch.testing.assert_close(sparse.dense_weight(), dense.weight.detach(), atol=0, rtol=0)


CONVS = [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 5), stride=(2, 1), padding=(2, 1), dilation=(1, 2)),
    dict(kernel_size=(4, 2), padding="same"),  # odd totals: "same" pads right/bottom one more
    dict(kernel_size=3, padding="same", dilation=2),
    dict(kernel_size=3, padding="valid", bias=False),
    dict(kernel_size=3, padding=2, padding_mode="reflect"),
    dict(kernel_size=3, padding=(1, 2), padding_mode="circular", stride=2),
    dict(kernel_size=2, padding=1, padding_mode="replicate"),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("layout", LAYOUTS, ids=["csr", "coo"])
@pytest.mark.parametrize("kwargs", CONVS, ids=[str(i) for i in range(len(CONVS))])
def test_sparse_conv_matches_dense_on_fresh_inputs(layout, kwargs):
    gen = torch.Generator().manual_seed(1)
    dense = nn.Conv2d(5, 7, **kwargs)
    _prune_randomly_(dense, 0.7, gen)
    sparse = SparseConv2d(dense, layout=layout)
    for shape in [(3, 5, 13, 11), (1, 5, 9, 9)]:
        x = torch.randn(shape, generator=gen)
        want = dense(x)
        got = sparse(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(sparse.dense_weight(), dense.weight.detach(), atol=0, rtol=0)


def test_sparse_layers_pass_gradients_to_the_input():
    gen = torch.Generator().manual_seed(2)
    for dense, shape in [(nn.Linear(8, 4), (3, 8)), (nn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5))]:
        _prune_randomly_(dense, 0.5, gen)
        sparse = SparseLinear(dense) if isinstance(dense, nn.Linear) else SparseConv2d(dense)
        x = torch.randn(shape, generator=gen, requires_grad=True)
        (g_dense,) = torch.autograd.grad(dense(x).square().sum(), x)
        (g_sparse,) = torch.autograd.grad(sparse(x).square().sum(), x)
        torch.testing.assert_close(g_sparse, g_dense, atol=ATOL, rtol=0)


def test_sparse_layers_run_under_inference_mode():
    gen = torch.Generator().manual_seed(3)
    conv, linear = nn.Conv2d(3, 4, 3), nn.Linear(10, 6)
    _prune_randomly_(conv, 0.6, gen)
    _prune_randomly_(linear, 0.6, gen)
    s_conv, s_linear = SparseConv2d(conv), SparseLinear(linear)
    x, y = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(4, 10, generator=gen)
    with torch.inference_mode():
        torch.testing.assert_close(s_conv(x), conv(x), atol=ATOL, rtol=0)
        torch.testing.assert_close(s_linear(y), linear(y), atol=ATOL, rtol=0)


def test_grouped_conv_is_rejected_in_one_line_naming_the_module():
    with pytest.raises(UnsupportedModuleError, match=r"module 'features\.3'.*groups=4") as err:
        SparseConv2d(nn.Conv2d(4, 8, 3, groups=4), name="features.3")
    _one_line(err)
    with pytest.raises(UnsupportedModuleError, match="SparseLinear needs an nn.Linear") as err:
        SparseLinear(nn.Conv2d(1, 1, 1))  # type: ignore[arg-type]
    _one_line(err)
    with pytest.raises(ConfigError, match="layout") as err:
        SparseLinear(nn.Linear(2, 2), layout=torch.strided)
    _one_line(err)


@pytest.mark.parametrize("layout", LAYOUTS, ids=["csr", "coo"])
@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_state_dict_round_trip_into_a_layer_with_another_pattern(layout):
    gen = torch.Generator().manual_seed(4)
    source, other = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 5, 3, padding=1)
    _prune_randomly_(source, 0.7, gen)
    _prune_randomly_(other, 0.2, gen)
    saved = io.BytesIO()
    torch.save(SparseConv2d(source, layout=layout).state_dict(), saved)
    saved.seek(0)
    target = SparseConv2d(other, layout=layout)
    assert target.nnz != int((source.weight != 0).sum())
    target.load_state_dict(torch.load(saved))
    x = torch.randn(2, 3, 6, 6, generator=gen)
    torch.testing.assert_close(target(x), source(x), atol=ATOL, rtol=0)
    assert target.nnz == int((source.weight != 0).sum())


# ---------------------------------------------------------------- sparsify


def _magnitude_pruned(model: nn.Module, fraction: float) -> nn.Module:
    return magnitude_sparsify(model, {name: fraction for name in weight_sparsity(model)})


@pytest.mark.parametrize("make, shape", [(LeNet, (4, 1, 28, 28)), (resnet20, (2, 3, 32, 32))],
                         ids=["lenet", "resnet20"])  # fmt: skip
def test_sparsify_keeps_outputs_and_replaces_sparse_layers(make, shape):
    torch.manual_seed(5)
    model = _magnitude_pruned(make().eval(), 0.75)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = sparsify(model, min_sparsity=0.5).eval()
    replaced = [m for m in fast.modules() if isinstance(m, (SparseLinear, SparseConv2d))]
    dense_layers = [m for m in model.modules() if type(m) in (nn.Linear, nn.Conv2d)]
    assert len(replaced) == len(dense_layers)
    x = torch.randn(shape)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), atol=ATOL, rtol=0)
    # the input model is left as it was
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, (SparseLinear, SparseConv2d)) for m in model.modules())


def test_sparsify_leaves_layers_below_min_sparsity_and_unmatched_layers_dense():
    torch.manual_seed(6)
    model = magnitude_sparsify(LeNet().eval(), {"conv2": 0.9, "fc1": 0.3, "fc2": 0.9})
    fast = sparsify(model, min_sparsity=0.5)
    assert isinstance(fast.conv2, SparseConv2d) and isinstance(fast.fc2, SparseLinear)
    assert type(fast.fc1) is nn.Linear and type(fast.conv1) is nn.Conv2d
    only = sparsify(model, min_sparsity=0.5, layers=["fc*"])
    assert type(only.conv2) is nn.Conv2d and isinstance(only.fc2, SparseLinear)
    everything = sparsify(model, min_sparsity=0.0)
    assert sum(isinstance(m, (SparseLinear, SparseConv2d)) for m in everything.modules()) == 4


def test_sparsify_skips_grouped_convs_unless_named():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 6, 1))
    with torch.no_grad():
        for m in model:
            m.weight.zero_()
    fast = sparsify(model)
    assert type(fast[0]) is nn.Conv2d and isinstance(fast[1], SparseConv2d)
    with pytest.raises(UnsupportedModuleError, match="module '0'.*groups=4") as err:
        sparsify(model, layers=["0"])
    _one_line(err)


def test_sparsify_bad_arguments_are_one_line_errors():
    model = LeNet()
    with pytest.raises(ConfigError, match=r"layers pattern 'conv9\*' matches no") as err:
        sparsify(model, layers=["conv1", "conv9*"])
    _one_line(err)
    with pytest.raises(ConfigError, match="layers pattern 'relu1' matches no"):
        sparsify(model, layers=["relu1"])
    with pytest.raises(ConfigError, match="layers must be a list"):
        sparsify(model, layers="conv1")  # type: ignore[arg-type]
    for bad in (-0.1, 1.5, True, "0.5"):
        with pytest.raises(ConfigError, match="min_sparsity") as err:
            sparsify(model, min_sparsity=bad)  # type: ignore[arg-type]
        _one_line(err)


# ---------------------------------------------------------------- matched sparsity


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.73, 0.999, 1.0])
def test_magnitude_sparsify_reaches_the_exact_count_and_drops_the_smallest(fraction):
    torch.manual_seed(7)
    model = LeNet()
    pruned = magnitude_sparsify(model, {"conv2": fraction, "fc1": fraction})
    for name in ("conv2", "fc1"):
        before, after = getattr(model, name).weight.detach(), getattr(pruned, name).weight.detach()
        assert int((after == 0).sum()) == round(fraction * before.numel())
        kept, dropped = before[after != 0], before[after == 0]
        assert torch.equal(after[after != 0], kept)  # survivors keep their values
        if kept.numel() and dropped.numel():
            assert dropped.abs().max() <= kept.abs().min()
    for name in ("conv1", "fc2"):
        assert torch.equal(getattr(pruned, name).weight, getattr(model, name).weight)
    assert torch.equal(pruned.fc1.bias, model.fc1.bias)
    assert not any(bool((p == 0).any()) for p in model.parameters())  # the input is untouched


def test_magnitude_sparsify_is_exact_among_ties_and_existing_zeros():
    model = nn.Sequential(nn.Linear(10, 10))
    with torch.no_grad():
        model[0].weight.fill_(0.5)
        model[0].weight[0, :7] = 0  # 7 zeros already: they count towards the target
    pruned = magnitude_sparsify(model, {"0": 0.42})
    assert int((pruned[0].weight == 0).sum()) == 42
    assert torch.equal(pruned[0].weight[0, :7], torch.zeros(7))
    with pytest.raises(ConfigError, match="'0' already has 7 zero weights, more than the target 5") as err:
        magnitude_sparsify(model, {"0": 0.05})
    _one_line(err)


def test_magnitude_sparsify_bad_arguments_are_one_line_errors():
    model = LeNet()
    with pytest.raises(ConfigError, match="no module named 'fc3'") as err:
        magnitude_sparsify(model, {"fc3": 0.5})
    _one_line(err)
    with pytest.raises(ConfigError, match="no module named ''"):
        magnitude_sparsify(model, {"": 0.5})
    with pytest.raises(UnsupportedModuleError, match="module 'pool1' \\(MaxPool2d\\) is not a Linear or Conv") as err:
        magnitude_sparsify(model, {"pool1": 0.5})
    _one_line(err)
    for bad in (-0.5, 1.01, None, True):
        with pytest.raises(ConfigError, match="sparsity of 'fc1' must be a number in \\[0, 1\\]"):
            magnitude_sparsify(model, {"fc1": bad})  # type: ignore[dict-item]


def test_matched_sparsity_copies_the_structured_models_per_layer_zero_counts():
    torch.manual_seed(8)
    structured, dense = LeNet(), LeNet()
    with torch.no_grad():
        structured.conv2.weight[::3] = 0  # filters, as SSL leaves them
        structured.fc1.weight[:, 100:500] = 0  # input columns
    baseline = matched_sparsity(structured, dense)
    for name, level in weight_sparsity(structured).items():
        assert weight_sparsity(baseline)[name] == level
    # the baseline's zeros are scattered: no filter of conv2 is entirely zero
    assert int((baseline.conv2.weight.flatten(1).abs().amax(dim=1) == 0).sum()) == 0
    only = matched_sparsity(structured, dense, layers=["fc1"])
    assert weight_sparsity(only)["conv2"] == 0.0 and weight_sparsity(only)["fc1"] == weight_sparsity(structured)["fc1"]
    with pytest.raises(ShrinkageError, match="'relu1' is not a Linear or Conv layer"):
        matched_sparsity(structured, dense, layers=["relu1"])
