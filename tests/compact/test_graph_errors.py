"""Operations without a channel rule fail loudly, or are left untouched when asked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import shrinkage
from shrinkage.compact import CompactOptions
from shrinkage.errors import ExampleInputError, UnsupportedModuleError
from shrinkage.graph import capture as capture_module
from shrinkage.graph.capture import Capture

from support.exactness import assert_compacts_exactly


class Gram(nn.Module):
    """conv -> a spectral mix of the channels that no rule covers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean(dim=(2, 3))  # (N, 8)
        y = torch.fft.fft(y, dim=1).abs()  # mixes channels: no rule in either capture
        return self.fc(y)


def test_unknown_operation_is_named_with_its_node() -> None:
    model = Gram().eval()
    with pytest.raises(UnsupportedModuleError, match="fft_fft at graph node 'fft_fft'"):
        shrinkage.compact(model, (torch.randn(2, 3, 8, 8),))


def test_opt_in_leaves_unknown_channels_untouched_and_stays_exact() -> None:
    model = Gram().eval()
    with torch.no_grad():
        model.conv.weight[[1, 2]] = 0
        model.fc.weight[[0]] = 0
    options = CompactOptions(allow_unknown=True)
    # fc's zero row is a model output, so nothing may go: exact and no larger
    small = assert_compacts_exactly(model, torch.randn(2, 3, 8, 8), options=options, fewer_params=False)
    assert small.conv.out_channels == 8  # feeds the unknown op: untouched


def test_untraceable_model_is_named() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(UnsupportedModuleError, match="Branchy"):
        shrinkage.compact(Branchy(), (torch.randn(2, 4),))


# ---- example inputs that do not fit the model name the module where they fail ----------------------------------


class Features(nn.Module):
    """conv -> relu -> conv -> flatten -> linear: the head expects 8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        self.head = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class Reshaping(nn.Module):
    """A reshape in the model's own forward, between its layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(36, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(x.shape[0], 36))


class BranchyFc(nn.Module):
    """Data-dependent control flow: neither torch.export nor torch.fx can capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else x


CAPTURES = [Capture.EXPORT, Capture.AUTO]
WRONG_INPUTS = {
    "wrong channels": (Features, torch.randn(1, 4, 8, 8), r"'features\.0'.*3 channels, but got 4"),
    "wrong rank": (Features, torch.randn(1, 1, 3, 8, 8), r"'features\.0'.*Expected 3D \(unbatched\) or 4D"),
    "wrong dtype": (Features, torch.randint(0, 5, (1, 3, 8, 8)), r"'features\.0'.*Long|long"),
    "wrong size, deeper": (Features, torch.randn(1, 3, 10, 10), r"'head'.*cannot be multiplied"),
    "in the model's own forward": (Reshaping, torch.randn(2, 3, 6, 6), r"(Reshaping\.forward at view|'view)"),
}  # fmt: skip


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: c.name)
@pytest.mark.parametrize("case", sorted(WRONG_INPUTS))
def test_a_wrong_example_input_names_the_module_where_it_fails(case: str, capture: Capture) -> None:
    make, x, pattern = WRONG_INPUTS[case]
    torch.manual_seed(0)
    model = make().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    given = x.clone()
    with pytest.raises(ExampleInputError, match=pattern) as info:
        shrinkage.compact(model, (x,), CompactOptions(capture=capture))
    assert "\n" not in str(info.value), str(info.value)
    # the model and the input are left as they were: no hooks, same mode, same tensors
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(x, given)


def test_under_export_the_failing_op_and_its_shapes_are_named() -> None:
    options = CompactOptions(capture=Capture.EXPORT)
    with pytest.raises(ExampleInputError) as info:
        shrinkage.compact(Features().eval(), (torch.randn(1, 4, 8, 8),), options)
    message = str(info.value)
    assert "module 'features.0' (Conv2d) at conv2d(float32[1, 4, 8, 8], float32[8, 3, 3, 3]" in message, message
    with pytest.raises(ExampleInputError, match=r"at conv2d\(int64\[1, 3, 8, 8\]"):
        shrinkage.compact(Features().eval(), (torch.randint(0, 5, (1, 3, 8, 8)),), options)


def test_inputs_that_fit_cost_no_extra_run(monkeypatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("an extra eager run for inputs that fit")

    monkeypatch.setattr(capture_module, "eager_failure", refuse)
    model = Features().eval()
    with torch.no_grad():
        model.features[0].weight[:2] = 0
        model.features[0].bias[:2] = 0
    for capture in CAPTURES:
        assert_compacts_exactly(model, torch.randn(2, 3, 8, 8), options=CompactOptions(capture=capture))


def test_an_export_failure_with_fitting_inputs_is_still_named_as_unsupported() -> None:
    with pytest.raises(UnsupportedModuleError, match="cannot export BranchyFc with torch.export") as info:
        shrinkage.compact(BranchyFc(), (torch.ones(2, 4),), CompactOptions(capture=Capture.EXPORT))
    assert not isinstance(info.value, ExampleInputError)


def test_when_neither_capture_runs_the_model_a_wrong_input_is_still_named() -> None:
    with pytest.raises(ExampleInputError, match=r"module 'fc' \(Linear\) at linear\(float32\[2, 5\]"):
        shrinkage.compact(BranchyFc(), (torch.ones(2, 5),))  # positive: the branch through fc runs
