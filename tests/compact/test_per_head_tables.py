"""Attention with a per-head table (Swin's relative position bias, a user's per-head
bias): declared per head, the table loses the removed heads' columns; undeclared, the
heads stay. Exact on fresh inputs, and through save / load."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from shrinkage.compact.attention_types import AttentionType, HeadCounts, register_attention_type

from support.exactness import assert_compacts_exactly, saved_and_loaded


def _timm_swin(seed: int = 0) -> nn.Module:
    swin = pytest.importorskip("timm.models.swin_transformer")
    torch.manual_seed(seed)
    return swin.SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2),
                                num_heads=(2, 4), num_classes=5).eval()  # fmt: skip


def test_timm_swin_shifted_window_attention_loses_heads_with_their_bias_columns(tmp_path) -> None:
    model = _timm_swin()
    shifted = model.layers[0].blocks[1].attn  # the shifted-window block: its mask comes from outside
    later = model.layers[1].blocks[0].attn
    d = shifted.qkv.out_features // 3 // shifted.num_heads
    width = shifted.num_heads * d
    table = later.relative_position_bias_table.detach().clone()
    with torch.no_grad():
        shifted.qkv.weight[2 * width + d : 2 * width + 2 * d] = 0  # value rows of head 1
        shifted.qkv.bias[2 * width + d : 2 * width + 2 * d] = 0
        later.proj.weight[:, 0:d] = 0  # head 0's merged channels, read by nobody
    x = torch.randn(2, 3, 32, 32)
    small = assert_compacts_exactly(model, (x,))
    assert small.layers[0].blocks[1].attn.num_heads == 1
    assert small.layers[1].blocks[0].attn.num_heads == 3
    torch.testing.assert_close(small.layers[1].blocks[0].attn.relative_position_bias_table, table[:, 1:])
    base = _timm_swin(seed=1)
    loaded = assert_compacts_exactly(model, (x,), compact=saved_and_loaded(base, tmp_path / "small.safetensors"))
    assert loaded.layers[1].blocks[0].attn.relative_position_bias_table.shape == (table.shape[0], 3)


def _hf_swin(seed: int = 0) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 1], num_heads=[2, 4],
                                     window_size=4, num_labels=5)  # fmt: skip
    return transformers.SwinForImageClassification(config).eval()


def test_hf_swin_loses_a_head_with_its_bias_column(tmp_path) -> None:
    model = _hf_swin()
    attn = model.swin.encoder.layers[1].blocks[0].attention
    d = attn.head_dim
    table = attn.relative_position_bias.relative_position_bias_table.detach().clone()
    with torch.no_grad():
        attn.v_proj.weight[2 * d : 3 * d] = 0  # value rows of head 2
        attn.v_proj.bias[2 * d : 3 * d] = 0
    x = torch.randn(2, 3, 32, 32)
    small = assert_compacts_exactly(model, (x,))
    kept = small.swin.encoder.layers[1].blocks[0].attention
    assert kept.q_proj.out_features == 3 * d
    torch.testing.assert_close(kept.relative_position_bias.relative_position_bias_table, table[:, [0, 1, 3]])
    assert_compacts_exactly(model, (x,), compact=saved_and_loaded(_hf_swin(seed=1), tmp_path / "small.safetensors"))


class BiasedHeads(nn.Module):
    """Separate q/k/v projections and a learned bias per head added to the scores."""

    def __init__(self, width: int = 24, heads: int = 3) -> None:
        super().__init__()
        self.heads, self.head_size = heads, width // heads
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        self.head_bias = nn.Parameter(torch.randn(heads))

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, -1, self.head_size).transpose(1, 2)

        scores = split(self.q(x)) @ split(self.k(x)).transpose(-1, -2) + self.head_bias.view(1, -1, 1, 1)
        merged = (scores.softmax(-1) @ split(self.v(x))).transpose(1, 2).reshape(b, t, -1)
        return self.out(merged)


def _biased_type(per_head: tuple[tuple[str, int], ...]) -> AttentionType:
    def counts(m: nn.Module) -> HeadCounts:
        return HeadCounts(m.heads, m.heads, m.head_size)

    def set_counts(m: nn.Module, query: int, key_value: int) -> None:
        m.heads = query

    return AttentionType((BiasedHeads,), counts, set_counts, "q", "k", "v", output="out", per_head=per_head)


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
def test_a_users_per_head_bias_goes_with_its_head_only_when_declared(declared: bool) -> None:
    register_attention_type(_biased_type((("head_bias", 0),) if declared else ()))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 24), BiasedHeads(), nn.Linear(24, 4)).eval()
    with torch.no_grad():
        model[1].v.weight[8:16] = 0  # value rows of head 1
        model[1].v.bias[8:16] = 0
    small = assert_compacts_exactly(model, (torch.randn(2, 5, 8),), fewer_params=declared)
    assert small[1].heads == (2 if declared else 3)
    if declared:
        torch.testing.assert_close(small[1].head_bias, model[1].head_bias[[0, 2]])
