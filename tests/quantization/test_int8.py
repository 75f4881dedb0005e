"""Int8 post-training quantization: close to the float model, ~4x smaller, clear errors."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

import shrinkage
from shrinkage.errors import ShrinkageError
from shrinkage.quantization import MissingExtraError, QuantizationError, quantize_int8
from shrinkage.zoo import resnet20

from support.exactness import assert_compacts_exactly
from support.sparsity import randomize_norm_stats
from support.zoo import zero_coupled

#: the int8 model's logits may differ from the float model's by this much (relative L2 norm):
#: measured 0.8-2% on these models; calibrating on inputs 20x too small gives 70% and more
REL_ERROR = 0.06
#: share of the batch whose predicted class must stay the same (measured 97.7-100%; miscalibrated 19-66%)
AGREEMENT = 0.9
SIZE = 16  # ResNet-20 runs on any input of 8 x 8 or more; small inputs keep the tests fast
#: one random image per class: a task a few optimizer steps learn, so logits depend on the input
#: (a random network predicts one class for every input, and any int8 model would "agree" with it)
TEMPLATES = torch.randn(10, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


class SmallNet(nn.Module):
    """conv-bn-relu, a strided conv, a residual add, pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))

    def forward(self, x: Tensor) -> Tensor:
        y = self.down(self.stem(x))
        return self.head(torch.relu(y + self.branch(y)))


def _task(gen: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
    """``n`` noisy copies of the class templates and their classes."""
    labels = torch.randint(0, 10, (n,), generator=gen)
    return TEMPLATES[labels] + 1.5 * torch.randn(n, 3, SIZE, SIZE, generator=gen), labels


def _batches(gen: torch.Generator, n: int, batch: int = 32) -> list[Tensor]:
    return [_task(gen, batch)[0] for _ in range(n)]


def _assert_close(model: nn.Module, quantized: nn.Module, x: Tensor) -> None:
    with torch.no_grad():
        reference, out = model.eval()(x), quantized(x)
    assert len(reference.argmax(1).unique()) >= 3, "the float model predicts too few classes for a real check"
    error = float((out - reference).norm() / reference.norm())
    agreement = float((out.argmax(1) == reference.argmax(1)).float().mean())
    assert error <= REL_ERROR, f"int8 logits off by {error:.3f} (relative L2)"
    assert agreement >= AGREEMENT, f"int8 predicts the float model's class on {agreement:.0%} of the batch"


def _saved_bytes(model: nn.Module, path: Path) -> int:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path.stat().st_size


@pytest.fixture(scope="module")
def trained() -> SmallNet:
    """SmallNet after 30 Adam steps on the template task (about 70% accurate)."""
    torch.manual_seed(0)
    model = SmallNet()
    gen = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        x, labels = _task(gen, 32)
        loss = nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def compacted(trained: SmallNet) -> nn.Module:
    """The trained SmallNet with a quarter of its coupled channels zeroed, compacted (odd widths)."""
    model = copy.deepcopy(trained)
    gen = torch.Generator().manual_seed(1)
    zero_coupled(model, (1, 3, SIZE, SIZE), gen, 0.25)
    return assert_compacts_exactly(model, (_task(gen, 4)[0],))


def test_int8_small_net_is_close_and_leaves_the_model_alone(trained: SmallNet) -> None:
    pytest.importorskip("torchao")
    model = copy.deepcopy(trained).train()
    gen = torch.Generator().manual_seed(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = quantize_int8(model, _task(gen, 1)[0], _batches(gen, 2), compile=False)
    assert all(m.training for m in model.modules())  # flags restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # observers ran on a copy
    x = _task(gen, 256)[0]
    _assert_close(model, quantized, x)
    with torch.no_grad():  # the batch dimension stays free although the example had batch 1
        assert quantized(x[:5]).shape == (5, 10)
    int8 = [v for v in quantized.state_dict().values() if v.dtype == torch.int8]
    assert len(int8) == 4  # three convolutions and the linear layer hold int8 weights


@pytest.mark.parametrize("factorized", [False, True], ids=["compacted", "factorized"])
def test_int8_compacted_model_is_close(compacted: nn.Module, factorized: bool) -> None:
    pytest.importorskip("torchao")
    widths = {m.out_channels for m in compacted.modules() if isinstance(m, nn.Conv2d)}
    assert widths and all(w % 8 for w in widths), f"compaction left widths {sorted(widths)}"
    small = compacted
    if factorized:  # every conv that gains by it becomes k x k -> r, then 1 x 1 r -> out
        small = shrinkage.factorize(compacted, 0.8)
        assert any(isinstance(m, nn.Sequential) and hasattr(m, "project") for m in small.modules())
    gen = torch.Generator().manual_seed(3)
    quantized = quantize_int8(small, _task(gen, 2)[0], _batches(gen, 2), compile=False)
    _assert_close(small, quantized, _task(gen, 256)[0])


def test_int8_resnet20_state_is_about_four_times_smaller(tmp_path: Path) -> None:
    """ResNet-20 applies one ReLU module twice per block: the capture must still quantize it."""
    pytest.importorskip("torchao")
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    model = resnet20().eval()
    randomize_norm_stats(model, gen)
    zero_coupled(model, (1, 3, SIZE, SIZE), gen, 0.3)
    small = assert_compacts_exactly(model, (torch.randn(2, 3, SIZE, SIZE, generator=gen),))
    quantized = quantize_int8(small, torch.randn(2, 3, SIZE, SIZE), _batches(gen, 1), compile=False)
    ratio = _saved_bytes(small, tmp_path / "float.safetensors") / _saved_bytes(quantized, tmp_path / "int8.safetensors")
    # below 4: per-channel scales and zero points, float biases (BatchNorm folded) and the file header
    assert 3.4 <= ratio <= 4.0, f"float / int8 file size {ratio:.2f}"
    convs = sum(isinstance(m, nn.Conv2d) for m in small.modules())
    assert sum(v.dtype == torch.int8 for v in quantized.state_dict().values()) == convs + 1  # and the fc


@pytest.mark.slow
def test_compiled_int8_runs_onednn_int8_kernels(trained: SmallNet) -> None:
    pytest.importorskip("torchao")
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters  # the x86 lowering counts every conv it prepacks for oneDNN int8

    model = trained
    gen = torch.Generator().manual_seed(5)
    calibration = _batches(gen, 2)
    reference = quantize_int8(model, calibration[0], calibration, compile=False)
    compiled = quantize_int8(model, calibration[0], calibration)
    counters.clear()
    x = _task(gen, 64)[0]
    with torch.inference_mode(), inductor_config.patch(fx_graph_cache=False):  # a cache hit would skip the passes
        out, ref = compiled(x), reference(x)
        assert counters["inductor"]["qconv_weight_prepack_matcher_count"] == 3
        assert counters["inductor"]["qlinear_weight_prepack_matcher_count"] == 1
        assert compiled(x[:1]).shape == (1, 10)  # another batch size: compiled again, still runs
    _assert_close(model, compiled, x)
    assert float((out - ref).norm() / ref.norm()) <= 0.02  # same int8 numbers, other kernels


def test_missing_torchao_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e.quantize_pt2e", None)  # import now fails
    with pytest.raises(MissingExtraError) as info:
        quantize_int8(SmallNet(), torch.randn(2, 3, SIZE, SIZE), [])
    message = str(info.value)
    assert isinstance(info.value, ShrinkageError) and isinstance(info.value, ImportError)
    assert "\n" not in message and 'pip install "shrinkage[quant]"' in message


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y if float(y.sum()) > 0 else -y  # a branch on a value: no graph can hold it


def test_model_that_cannot_be_exported_is_named_in_one_line() -> None:
    pytest.importorskip("torchao")
    with pytest.raises(QuantizationError) as info:
        quantize_int8(DataDependent(), torch.randn(2, 3, SIZE, SIZE), [torch.randn(2, 3, SIZE, SIZE)])
    message = str(info.value)
    assert "\n" not in message and "DataDependent" in message and "torch.export" in message


def test_empty_calibration_is_refused() -> None:
    pytest.importorskip("torchao")
    with pytest.raises(QuantizationError, match="calibration gave no batch for SmallNet"):
        quantize_int8(SmallNet(), torch.randn(2, 3, SIZE, SIZE), [], compile=False)


def test_a_graph_inductor_cannot_lower_is_refused_at_quantization(monkeypatch: pytest.MonkeyPatch) -> None:
    """inductor's int8 lowering can fail on a graph the conversion accepted; the failure must
    come from quantize_int8 as one line, not from the caller's first forward pass."""
    pytest.importorskip("torchao")
    from shrinkage import quantization

    calls = []

    def failing_forward(self: nn.Module, *inputs: Tensor) -> Tensor:
        calls.append(inputs[0].shape)
        raise AssertionError("expected size 30==30, stride 1==256 at dim=1\nmore lines of generated code")

    monkeypatch.setattr(quantization.FrozenCompiled, "forward", failing_forward)
    x = torch.randn(2, 3, SIZE, SIZE)
    with pytest.raises(QuantizationError) as info:
        quantize_int8(SmallNet().eval(), x, [x])
    message = str(info.value)
    assert calls == [x.shape], "the compiled model was not run on the example before returning"
    assert "\n" not in message and "inductor cannot lower the int8 graph of SmallNet" in message
    assert "AssertionError: expected size 30==30" in message and "compile=False" in message


@pytest.mark.slow
def test_pruned_resnet20_runs_int8_kernels_at_every_batch_size() -> None:
    """A ResNet-20 pruned to uneven widths (the group-norm ablation of the CIFAR-10 results):
    the dynamic-batch graph inductor compiled for a second batch size failed its own stride
    assertion in the int8 conv lowering; every batch size now gets a static graph."""
    pytest.importorskip("torchao")
    path = Path(__file__).resolve().parents[2] / "results" / "cifar10" / "models" / "prune50norm-s0.safetensors"
    model = shrinkage.load(path, resnet20()).eval()
    gen = torch.Generator().manual_seed(0)
    calibration = [torch.randn(16, 3, 32, 32, generator=gen)]
    quantized = quantize_int8(model, calibration[0][:1], calibration)
    for n in (1, 4, 3):
        x = torch.randn(n, 3, 32, 32, generator=gen)
        with torch.no_grad():
            out, reference = quantized(x), model(x)
        assert out.shape == (n, 10)
        assert float((out - reference).norm() / reference.norm()) <= REL_ERROR
