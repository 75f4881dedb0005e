"""Attention heads as groups: HeadPrunedAttention matches nn.MultiheadAttention, the Heads
kind couples q/k/v/out of a head, and compaction removes exactly the zeroed heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import shrinkage
from shrinkage.config import GroupName
from shrinkage.config.resolve import group_kind
from shrinkage.errors import UnsupportedModuleError
from shrinkage.groups import Heads
from shrinkage.layers import HeadPrunedAttention, removable_heads

from support.exactness import assert_compacts_exactly

E, H, D = 32, 4, 8


def _inputs(batch_first: bool, kdim: int | None, gen: torch.Generator):
    q = torch.randn(3, 5, E, generator=gen)
    kv = torch.randn(3, 6, kdim or E, generator=gen)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    return q, kv


def _masks(gen: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    causal_like = torch.rand(5, 6, generator=gen) > 0.6
    causal_like[:, 0] = False  # every query sees at least one key
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[0, -2:] = True
    return {
        "none": {},
        "bool": {"attn_mask": causal_like, "key_padding_mask": padding},
        "float": {"attn_mask": torch.randn(5, 6, generator=gen)},
        "per_head": {"attn_mask": torch.randn(3 * H, 5, 6, generator=gen)},
    }


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 24])
@pytest.mark.parametrize("mask", ["none", "bool", "float", "per_head"])
@pytest.mark.parametrize("need_weights", [True, False])
def test_all_heads_kept_matches_multihead_attention(batch_first, kdim, mask, need_weights) -> None:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first, kdim=kdim, vdim=kdim).eval()
    pruned = HeadPrunedAttention.from_module("attn", mha, torch.ones(H, dtype=torch.bool)).eval()
    q, kv = _inputs(batch_first, kdim, gen)
    kwargs = _masks(gen)[mask]
    with torch.no_grad():
        ref_out, ref_w = mha(q, kv, kv, need_weights=need_weights, **kwargs)
        out, w = pruned(q, kv, kv, need_weights=need_weights, **kwargs)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    if need_weights:
        torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    else:
        assert w is None


def _zero_heads(mha: nn.MultiheadAttention, values: list[int], outputs: list[int]) -> None:
    with torch.no_grad():
        for h in values:  # value rows and bias: the head averages zero vectors
            mha.in_proj_weight[2 * E + h * D : 2 * E + (h + 1) * D] = 0
            mha.in_proj_bias[2 * E + h * D : 2 * E + (h + 1) * D] = 0
        for h in outputs:  # output columns: nobody reads the head
            mha.out_proj.weight[:, h * D : (h + 1) * D] = 0


def test_removable_heads_are_those_with_zero_values_or_zero_outputs_not_zero_queries() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H)
    _zero_heads(mha, values=[1], outputs=[3])
    with torch.no_grad():
        mha.in_proj_weight[:D] = 0  # head 0's queries: uniform attention still averages its values
        mha.in_proj_bias[:D] = 0
    assert removable_heads("attn", mha).tolist() == [False, True, False, True]


@pytest.mark.parametrize("per_head_mask", [False, True])
def test_pruned_heads_give_the_same_output(per_head_mask: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    _zero_heads(mha, values=[0], outputs=[2])
    keep = ~removable_heads("attn", mha)
    pruned = HeadPrunedAttention.from_module("attn", mha, keep).eval()
    assert pruned.num_heads == 2 and pruned.kept.tolist() == [1, 3]
    q, kv = _inputs(True, None, gen)
    mask = torch.randn(3 * H, 5, 6, generator=gen) if per_head_mask else None
    with torch.no_grad():
        expected = mha(q, kv, kv, attn_mask=mask)[0]
        torch.testing.assert_close(pruned(q, kv, kv, attn_mask=mask)[0], expected, atol=1e-5, rtol=1e-5)


def test_no_heads_left_outputs_the_output_bias() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=True).eval()
    _zero_heads(mha, values=[0, 1, 2, 3], outputs=[])
    pruned = HeadPrunedAttention.from_module("attn", mha, torch.zeros(H, dtype=torch.bool))
    x = torch.randn(2, 5, E)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x, x, x)[0], mha(x, x, x)[0], atol=1e-6, rtol=0)
    assert pruned(x, x, x)[0].shape == (2, 5, E)


def test_heads_kind_couples_query_key_value_and_output_of_each_head() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H)
    (grouping,) = Heads().build("attn", mha)
    assert grouping.shape == (H, 3 * D * E + 3 * D + D * E)
    matrix = grouping.gather().detach().clone()
    matrix[2] = 0
    grouping.scatter_(matrix)
    assert removable_heads("attn", mha).tolist() == [False, False, True, False]
    assert mha.in_proj_weight[2 * D : 3 * D].abs().sum() == 0  # the head's queries went with it
    assert mha.in_proj_weight[E + 2 * D : E + 3 * D].abs().sum() == 0  # and its keys
    assert mha.in_proj_weight[3 * D : 4 * D].abs().sum() > 0


def test_heads_kind_works_on_an_already_pruned_module_and_names_others() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H)
    pruned = HeadPrunedAttention.from_module("attn", mha, torch.tensor([True, False, True, True]))
    (grouping,) = Heads().build("attn", pruned)
    assert grouping.shape == (3, 3 * D * E + 3 * D + D * E)
    with pytest.raises(UnsupportedModuleError, match="'blocks.0.fc'.*Linear"):
        Heads().build("blocks.0.fc", nn.Linear(4, 4))
    assert isinstance(group_kind(GroupName("heads"), (1, 4)), Heads)


class _Block(nn.Module):
    def __init__(self, return_weights: bool) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(E, H, batch_first=True)
        self.return_weights = return_weights

    def forward(self, x: torch.Tensor):
        out, weights = self.attn(x, x, x)
        return (x + out, weights) if self.return_weights else x + out


@pytest.mark.parametrize("return_weights", [False, True])
def test_compaction_removes_heads_unless_their_weights_are_read(return_weights: bool) -> None:
    torch.manual_seed(0)
    model = _Block(return_weights).eval()
    _zero_heads(model.attn, values=[1], outputs=[2])
    # heads whose weights reach the output cannot go: then nothing is smaller
    small = assert_compacts_exactly(model, torch.randn(2, 5, E), fewer_params=not return_weights)
    if return_weights:  # the per-head weights reach the output: every head must stay
        assert isinstance(small.attn, nn.MultiheadAttention)
    else:
        assert isinstance(small.attn, HeadPrunedAttention) and small.attn.num_heads == 2


def test_a_compacted_attention_compacts_again() -> None:
    torch.manual_seed(0)
    model = _Block(return_weights=False).eval()
    _zero_heads(model.attn, values=[1], outputs=[])
    x = torch.randn(2, 5, E)
    once = assert_compacts_exactly(model, x)
    with torch.no_grad():  # a later round of training zeroes original head 3 (now the third kept)
        once.attn.out_proj.weight[:, 2 * D : 3 * D] = 0
    twice = assert_compacts_exactly(once, x)
    assert twice.attn.kept.tolist() == [0, 2]


class _Opaque(nn.Module):
    """A custom block declared a leaf: what it does with its attention is not visible."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(E, H, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, weights = self.attn(x, x, x)
        return out + weights.sum()  # reads the weights, which head removal would change


def test_attention_inside_an_opaque_leaf_keeps_its_heads() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_Opaque()).eval()
    _zero_heads(model[0].attn, values=[1], outputs=[])
    options = shrinkage.CompactOptions(leaf_modules=(_Opaque,), allow_unknown=True)
    small = shrinkage.compact(model, (torch.randn(2, 5, E),), options)
    assert isinstance(small[0].attn, nn.MultiheadAttention)
