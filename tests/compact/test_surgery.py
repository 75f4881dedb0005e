"""Conformance: every registered surgery keeps exactly the selected slices of its layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shrinkage.compact.layer_types import registered_layer_types
from shrinkage.compact.surgery import shrink
from shrinkage.errors import UnsupportedModuleError
from shrinkage.layers import ZeroWidthConv

try:  # the registry adds optional libraries' layers once they are imported: import them
    # here, so every test worker collects the same cases
    from transformers.pytorch_utils import Conv1D
except ImportError:
    Conv1D = None


def _example(cls: type[nn.Module]) -> tuple[nn.Module, torch.Tensor]:
    """An instance of ``cls`` (4 -> 6 channels where that applies) and an input for it."""
    if issubclass(cls, nn.Linear):
        return cls(4, 6), torch.randn(3, 4)
    if cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        d = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[cls]
        return cls(4, 6, 3, padding=1), torch.randn(2, 4, *([5] * d))
    if cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        d = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}[cls]
        m = cls(6)
        with torch.no_grad():
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.weight.normal_()
            m.bias.normal_()
        return m.eval(), torch.randn(2, 6, *([4] * d))
    if cls is nn.PReLU:
        m = nn.PReLU(6)
        with torch.no_grad():
            m.weight.uniform_(-1, 1)
        return m, torch.randn(2, 6, 4, 4)
    if cls is ZeroWidthConv:  # a conv that reads no channels: its output is its bias
        m = ZeroWidthConv(0, 6, (3, 3), (2, 2), (1, 1), (1, 1), bias=True)
        with torch.no_grad():
            m.bias.normal_()
        return m, torch.randn(2, 0, 5, 5)
    if Conv1D is not None and cls is Conv1D:  # GPT-2's linear layer with an (in, out) weight: 4 -> 6
        m = Conv1D(6, 4)
        with torch.no_grad():
            m.bias.normal_()
        return m, torch.randn(3, 4)
    raise AssertionError(f"add an example for {cls.__name__} to this conformance test")


@pytest.mark.parametrize(
    "cls", sorted((cls for cls, _ in registered_layer_types()), key=lambda c: c.__name__), ids=lambda c: c.__name__
)
def test_registered_surgery_keeps_exactly_the_selected_slices(cls: type[nn.Module]) -> None:
    module, x = _example(cls)
    in_dim = 1 if x.dim() > 2 else -1
    n_in = x.shape[in_dim]
    n_out = module(x).shape[in_dim]
    keep_out = torch.tensor([i % 2 == 0 for i in range(n_out)])
    keep_in = torch.tensor([i != 1 for i in range(n_in)]) if n_in != n_out or isinstance(module, nn.Linear) else keep_out
    per_channel = isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d | nn.PReLU)
    keep = {0: keep_out} if per_channel else {0: keep_out, 1: keep_in}
    small = shrink("layer", module, keep)
    assert type(small) is type(module)
    with torch.no_grad():
        if per_channel:
            reference = module(x).index_select(1, keep_out.nonzero().flatten())
            got = small(x.index_select(1, keep_out.nonzero().flatten()))
        else:
            masked = x * keep_in.reshape([-1] + [1] * (x.dim() - 2)) if in_dim == 1 else x * keep_in
            reference = module(masked).index_select(in_dim, keep_out.nonzero().flatten())
            got = small(x.index_select(in_dim, keep_in.nonzero().flatten()))
    torch.testing.assert_close(got, reference, atol=1e-6, rtol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in module.parameters())


def test_unregistered_layer_is_named_in_the_error() -> None:
    with pytest.raises(UnsupportedModuleError, match="'blocks.3'.*LSTM"):
        shrink("blocks.3", nn.LSTM(4, 4), {0: torch.ones(4, dtype=torch.bool)})


@pytest.mark.parametrize(
    ("module", "x", "expected"),
    [
        (nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True), torch.randn(2, 4, 7, 7), ZeroWidthConv),
        (nn.Linear(4, 6), torch.randn(3, 4), nn.Linear),
        (nn.BatchNorm2d(6), torch.randn(2, 6, 3, 3), nn.Identity),
    ],
    ids=["conv", "linear", "batchnorm"],
)
def test_removing_every_output_leaves_a_zero_width_layer(module: nn.Module, x: torch.Tensor, expected: type) -> None:
    module.eval()
    keep = {0: torch.zeros(6, dtype=torch.bool)}
    small = shrink("branch.conv1", module, keep)
    assert type(small) is expected
    with torch.no_grad():
        out, ref = small(x if expected is not nn.Identity else x[:, :0]), module(x)
    assert out.shape == (ref.shape[0], 0, *ref.shape[2:])


def test_a_conv_reading_no_channels_outputs_its_bias_over_the_right_positions() -> None:
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    small = shrink("branch.conv2", conv, {1: torch.zeros(4, dtype=torch.bool)})
    assert isinstance(small, ZeroWidthConv)
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        expected = conv(torch.zeros_like(x))  # no input channel contributes: only the bias is left
        got = small(x[:, :0])
        got += 1  # callers add into it in place (out += identity): it must own its memory
    torch.testing.assert_close(got - 1, expected)


@pytest.mark.parametrize(
    "cls", sorted((cls for cls, _ in registered_layer_types()), key=lambda c: c.__name__), ids=lambda c: c.__name__
)
def test_a_shrunk_layer_owns_its_tensors_in_the_original_dtype(cls: type[nn.Module]) -> None:
    """Nothing of the shrunk layer is shared with the original (training one must not move
    the other), nothing is left unset (surgery builds layers without initializing them),
    and a float64 layer stays float64."""
    module, x = _example(cls)
    module = module.double()
    keep = {0: torch.tensor([i % 2 == 0 for i in range(6)])}  # every example has 6 outputs / channels
    small = shrink("layer", module, keep)
    originals = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()] if t.numel()}
    for name, t in [*small.named_parameters(), *small.named_buffers()]:
        assert not t.is_meta, name
        assert not t.numel() or t.untyped_storage().data_ptr() not in originals, name
        if t.is_floating_point():
            assert t.dtype == torch.float64, name
    assert all(p.requires_grad for p in small.parameters())


def test_a_shrunk_plain_layer_keeps_its_settings_and_frozen_weights_but_no_hooks() -> None:
    """Plain layers are built without running their constructor: what the constructor would
    have set comes from the original (padding, eps, a frozen weight's requires_grad, a
    norm without affine parameters or running statistics), hooks and an earlier form
    choice do not."""
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, bias=False)
    with torch.no_grad():
        conv.weight[:, 2] = 0  # the input channel removed below
    conv.weight.requires_grad_(False)
    conv.register_forward_hook(lambda m, i, o: o * 0)
    conv.form_choice = "an earlier choice"
    x = torch.randn(2, 4, 9, 9)
    keep = {0: torch.tensor([True, False, True, True, False, True]), 1: torch.tensor([True, True, False, True])}
    small = shrink("conv", conv, keep)
    assert type(small) is nn.Conv2d and (small.in_channels, small.out_channels) == (3, 4)
    assert (small.stride, small.padding, small.bias) == ((2, 2), (1, 1), None)
    assert not small.weight.requires_grad and not small._forward_hooks and not hasattr(small, "form_choice")
    with torch.no_grad():
        expected = nn.functional.conv2d(x, conv.weight, None, 2, 1)[:, keep[0]]
        torch.testing.assert_close(small(x[:, keep[1]]), expected)
    for norm in (nn.BatchNorm2d(6, affine=False), nn.BatchNorm2d(6, track_running_stats=False)):
        norm.eval()
        shrunk = shrink("norm", norm, {0: keep[0]})
        assert shrunk.num_features == 4 and shrunk.affine == norm.affine
        y = torch.randn(3, 6, 2, 2)
        with torch.no_grad():
            torch.testing.assert_close(shrunk(y[:, keep[0]]), norm(y)[:, keep[0]])
