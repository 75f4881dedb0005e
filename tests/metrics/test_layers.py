"""Per-layer sparsity / rank table and accuracy evaluation."""

import pytest
import torch
from torch import nn

from shrinkage.errors import ConfigError, DataError, UnsupportedModuleError
from shrinkage.metrics import evaluate, group_sparsity, layer_table, layer_table_markdown, rank_at_energy


def _sparse_conv() -> nn.Conv2d:
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.weight[0] = 0
        conv.weight[2] = 0
        conv.weight[:, 1] = 0
    return conv


def test_group_sparsity_counts() -> None:
    stats = group_sparsity(_sparse_conv().weight)
    assert stats["filters"] == 4 and stats["zero_filters"] == 2
    assert stats["channels"] == 3 and stats["zero_channels"] == 1
    assert stats["shape_columns"] == 27 and stats["zero_shape_columns"] == 9
    # Zero: 2 whole filters (54) + channel 1 of the 2 other filters (18).
    assert stats["zero_elements"] == 72
    assert stats["sparsity"] == pytest.approx(72 / 108)


def test_group_sparsity_linear_has_no_shape_columns() -> None:
    weight = torch.ones(5, 6)
    weight[:, 2] = 0
    stats = group_sparsity(weight)
    assert stats["zero_channels"] == 1 and stats["zero_filters"] == 0
    assert stats["shape_columns"] is None and stats["zero_shape_columns"] is None
    with pytest.raises(UnsupportedModuleError):
        group_sparsity(torch.ones(5))


def test_layer_table_on_sparse_conv() -> None:
    model = nn.Sequential(_sparse_conv(), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    rows = layer_table(model)
    assert [(r.name, r.kind) for r in rows] == [("0", "Conv2d"), ("3", "Linear")]
    conv = rows[0]
    assert conv.shape == (4, 3, 3, 3)
    assert conv.params == 4 * 27 + 4
    assert (conv.zero_filters, conv.zero_channels, conv.zero_shape_columns) == (2, 1, 9)
    assert conv.full_rank == 4
    assert conv.compact is None and conv.compact_params is None


def test_rank_at_energy() -> None:
    torch.manual_seed(0)
    weight = (torch.randn(6, 2) @ torch.randn(2, 3 * 3 * 3)).reshape(6, 3, 3, 3)
    conv = nn.Conv2d(3, 6, 3)
    with torch.no_grad():
        conv.weight.copy_(weight)
    row = layer_table(conv, energy=1.0)[0]
    assert (row.rank, row.full_rank) == (2, 6)
    assert rank_at_energy(weight, 1.0) == 2
    assert rank_at_energy(weight, 0.01) == 1
    assert rank_at_energy(torch.zeros(3, 4), 0.9) == 0
    # A diagonal spectrum 3,2,1 (energies 9,4,1 of 14): 90% needs 2, 95% needs 3.
    diagonal = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    assert rank_at_energy(diagonal, 0.9) == 2
    assert rank_at_energy(diagonal, 0.95) == 3
    with pytest.raises(ConfigError):
        rank_at_energy(diagonal, 0.0)


def test_layer_table_describes_compact_model() -> None:
    dense = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 2))
    compact = nn.Sequential(
        nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(5, 2, 3), nn.Conv2d(2, 8, 1)), nn.Flatten()
    )
    rows = {row.name: row for row in layer_table(dense, compact)}
    assert rows["0"].compact == "Conv2d 5x3x3x3"
    assert rows["0"].compact_shapes == ((5, 3, 3, 3),)
    assert rows["0"].compact_params == 5 * 27 + 5
    assert rows["2"].compact_shapes == ((2, 5, 3, 3), (8, 2, 1, 1))
    assert rows["2"].compact.startswith("Sequential:")
    assert rows["4"].compact == "removed" and rows["4"].compact_params == 0
    custom = nn.Sequential(nn.Identity(), nn.ReLU(), nn.Module(), nn.Flatten(), nn.Bilinear(2, 3, 4))
    custom_rows = {row.name: row for row in layer_table(dense, custom)}
    assert custom_rows["0"].compact == "Identity (no parameters)" and custom_rows["0"].compact_params == 0
    assert custom_rows["4"].compact == "Bilinear 4x2x3" and custom_rows["4"].compact_params == 28
    text = layer_table_markdown(rows.values())
    assert "removed" in text and "| `2` | Conv2d | 8x8x3x3 |" in text


class _OneHot(nn.Module):
    """Returns one-hot logits of the label carried in the input's first column."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0].long(), 3).float() * 10


def test_evaluate_perfect_model() -> None:
    labels = [torch.tensor([0, 1, 2]), torch.tensor([2])]
    batches = [(y.float().unsqueeze(1), y) for y in labels]
    model = _OneHot().train()
    result = evaluate(model, batches)
    assert result.accuracy == 1.0 and result.error == 0.0 and result.n == 4
    assert result.loss < 1e-3
    assert model.training


def test_evaluate_errors() -> None:
    with pytest.raises(DataError, match="no samples"):
        evaluate(_OneHot(), [])
    wrong = [(torch.tensor([[1.0], [1.0]]), torch.tensor([1, 0]))]
    assert evaluate(_OneHot(), wrong).accuracy == 0.5
