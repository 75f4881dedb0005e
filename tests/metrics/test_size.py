"""Parameter and MAC counting."""

import pytest
import torch
from torch import nn

from shrinkage.errors import ConfigError, UnsupportedModuleError
from shrinkage.metrics import conv_macs, count_macs, count_parameters


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def test_linear_macs_batch_one() -> None:
    assert count_macs(nn.Linear(100, 10), (torch.randn(1, 100),)).total == 1000


def test_conv_macs() -> None:
    result = count_macs(nn.Conv2d(3, 8, 3), (torch.randn(1, 3, 10, 10),))
    assert result.total == 8 * 3 * 9 * 8 * 8
    assert result.per_module == {"": 8 * 3 * 9 * 8 * 8}


def test_per_module_names_match_named_modules() -> None:
    model = SmallNet()
    result = count_macs(model, (torch.randn(2, 3, 10, 10),))
    names = {name for name, _ in model.named_modules()}
    assert set(result.per_module) <= names
    conv = 2 * 8 * 3 * 9 * 8 * 8
    fc = 2 * 512 * 10
    assert result.per_module["features.0"] == conv
    assert result.per_module["features"] == conv
    assert result.per_module["head"] == fc
    assert result.per_module[""] == result.total == conv + fc
    assert result.per_operator == {"aten.convolution": conv, "aten.addmm": fc}


def test_lone_tensor_accepted_and_bad_inputs_rejected() -> None:
    assert count_macs(nn.Linear(4, 2), torch.randn(3, 4)).total == 24
    with pytest.raises(ConfigError):
        count_macs(nn.Linear(4, 2), [torch.randn(3, 4)])  # type: ignore[arg-type]
    with pytest.raises(UnsupportedModuleError):
        count_macs("not a model", (torch.randn(1),))  # type: ignore[arg-type]


def test_training_modes_restored() -> None:
    model = SmallNet().train()
    model.features[1].eval()  # a deliberately frozen BatchNorm must stay frozen
    count_macs(model, (torch.randn(1, 3, 10, 10),))
    assert model.training and model.head.training
    assert not model.features[1].training
    model.eval()
    count_macs(model, (torch.randn(1, 3, 10, 10),))
    assert not any(m.training for m in model.modules())


def test_count_parameters_tied_weights() -> None:
    embedding = nn.Embedding(10, 4)
    decoder = nn.Linear(4, 10, bias=False)
    decoder.weight = embedding.weight
    model = nn.ModuleDict({"embedding": embedding, "decoder": decoder})
    assert count_parameters(model) == 40
    assert count_parameters(nn.Linear(100, 10)) == 1010


def test_conv_macs_counts_replacements_once() -> None:
    dense = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    # Low-rank replacement of the conv: 3x3 conv to 2 channels, then 1x1 conv to 8.
    compact = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 2, 3), nn.Conv2d(2, 8, 1)), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    )
    x = (torch.randn(1, 3, 10, 10),)
    dense_conv = conv_macs(count_macs(dense, x), dense)
    compact_conv = conv_macs(count_macs(compact, x), compact, conv_names=["0"])
    assert dense_conv == 8 * 27 * 64
    assert compact_conv == 2 * 27 * 64 + 8 * 2 * 64


class _LoweredPointwise(nn.Module):
    """A 1x1 conv computed as a matmul, like compaction's im2col replacements."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().flatten(1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return torch.matmul(self.weight, x.reshape(n, c, h * w)).reshape(n, -1, h, w)


def test_conv_macs_counts_non_conv_replacements_by_name() -> None:
    dense = nn.Sequential(nn.Conv2d(4, 6, 1, bias=False), nn.Flatten(), nn.Linear(6 * 25, 2))
    compact = nn.Sequential(_LoweredPointwise(dense[0]), nn.Flatten(), nn.Linear(6 * 25, 2))
    x = (torch.randn(1, 4, 5, 5),)
    dense_conv = conv_macs(count_macs(dense, x), dense)
    assert conv_macs(count_macs(compact, x), compact) == 0  # no conv module left
    assert conv_macs(count_macs(compact, x), compact, conv_names=["0"]) == dense_conv == 6 * 4 * 25


class _Attention(nn.Module):
    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=self.need_weights)[0]


@pytest.mark.parametrize("need_weights", [False, True])
def test_attention_macs_are_counted_on_the_cpu(need_weights: bool) -> None:
    """Projections (4 of 64x64 per token) plus Q K^T and weights V (10x10x64 each)."""
    x = torch.randn(2, 10, 64)
    expected = 2 * (10 * 64 * 64 * 4 + 2 * 10 * 10 * 64)
    assert count_macs(_Attention(need_weights).eval(), (x,)).total == expected
    assert torch.backends.mha.get_fastpath_enabled()  # restored afterwards
