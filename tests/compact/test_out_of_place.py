"""In-place ops of an exported graph rewritten out of place only where no other name for
the written storage is read afterwards; otherwise the general functionalization runs."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from shrinkage.graph.export_graph import export_model
from shrinkage.graph.out_of_place import is_mutating, rewrite_out_of_place


class Residual(nn.Module):
    """``out += identity`` and ``ReLU(inplace=True)``, as torchvision's ResNets write them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu = nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        out += x
        return self.relu(out)


class _Conv(nn.Module):
    """A 1x1 convolution whose output the subclasses' forwards write into."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)


class Chained(_Conv):
    """Two writes to one tensor, and a view taken after them (reads the new value)."""

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        before = y * 2  # read before the writes: the old value
        y.relu_()
        y.mul_(3)
        return y.flatten(1).sum(1) + before.sum((1, 2, 3))


class ViewReadAfter(_Conv):
    """A view taken before the write and read after it sees the write."""

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        v = y.flatten(1)
        y.add_(1)
        return v * 2


class SliceFill(_Conv):
    """A write into a slice changes its base, which is read afterwards (Swin's mask)."""

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        y[:, :2] = 0.5
        return y * 2


class WritesInput(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        x.add_(1)
        return x * 2


def _exported(model: nn.Module, x: Tensor) -> torch.fx.GraphModule:
    return torch.export.export(model.eval(), (x,), strict=False).module()


@pytest.mark.parametrize("model", [Residual(), Chained()], ids=["residual", "chained"])
def test_private_writes_are_rewritten_and_compute_the_same(model: nn.Module) -> None:
    x = torch.randn(2, 3, 5, 5)
    gm = _exported(model, x)
    assert any(is_mutating(n) for n in gm.graph.nodes)
    assert rewrite_out_of_place(gm)
    assert not any(is_mutating(n) for n in gm.graph.nodes)
    fresh = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(gm(fresh.clone()), model(fresh.clone()), rtol=0, atol=0)


@pytest.mark.parametrize("model", [ViewReadAfter(), SliceFill(), WritesInput()], ids=["view", "slice", "input"])
def test_writes_another_name_can_see_are_left_to_functionalization(model: nn.Module) -> None:
    x = torch.randn(2, 3, 5, 5)
    assert not rewrite_out_of_place(_exported(model, x))
    gm = export_model(model, (x,))  # the general way: one value per node, the model's outputs
    # (what is left in place is the write back into a caller's input, functionalization's epilogue)
    assert all(n.args[0].op == "placeholder" for n in gm.graph.nodes if is_mutating(n))
    fresh = torch.randn(2, 3, 5, 5)
    (got,) = gm(fresh.clone())
    torch.testing.assert_close(got, model(fresh.clone()), rtol=0, atol=0)


def test_export_capture_of_a_residual_block_does_not_trace_again(monkeypatch: pytest.MonkeyPatch) -> None:
    def traced_again(*_: object, **__: object) -> None:
        raise AssertionError("run_decompositions traced the model again")

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", traced_again)
    model, x = Residual().eval(), torch.randn(2, 3, 5, 5)
    gm = export_model(model, (x,))
    (got,) = gm(x.clone())
    torch.testing.assert_close(got, model(x.clone()), rtol=0, atol=0)
