"""Heads of hand-written attention (timm's ViT, BERT, GPT-2's fused Conv1D, LLaMA's
grouped-query attention, a user's own module) go whole, with the module's head counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import shrinkage
from shrinkage.compact.attention_types import AttentionType, HeadCounts, attention_type_of, register_attention_type

from support.exactness import assert_compacts_exactly, saved_and_loaded

VOCAB = 64


def _ids(seed: int = 0) -> Tensor:
    return torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(seed))


def _zero_rows(layer: nn.Module, rows: slice) -> None:
    """Zero output rows (canonical: a Conv1D's weight is stored (in, out)) and their biases."""
    with torch.no_grad():
        weight = layer.weight.T if type(layer).__name__ == "Conv1D" else layer.weight
        weight[rows] = 0
        if layer.bias is not None:
            layer.bias[rows] = 0


# -- timm ------------------------------------------------------------------------------


def _vit(seed: int = 0) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8, depth=2
    ).eval()


def test_timm_vit_loses_a_head_with_zero_values_and_one_nobody_reads(tmp_path) -> None:
    model = _vit()
    attn0, attn1 = model.blocks[0].attn, model.blocks[1].attn
    d, width = attn0.head_dim, attn0.num_heads * attn0.head_dim
    _zero_rows(attn0.qkv, slice(2 * width + d, 2 * width + 2 * d))  # value rows of head 1
    with torch.no_grad():
        attn1.proj.weight[:, 2 * d : 3 * d] = 0  # head 2's merged channels, read by nobody
    x = torch.randn(2, 3, 32, 32)
    small = assert_compacts_exactly(model, (x,))
    assert small.blocks[0].attn.num_heads == attn0.num_heads - 1
    assert small.blocks[0].attn.qkv.out_features == 3 * (width - d)
    assert small.blocks[1].attn.proj.in_features == width - d
    assert small.blocks[1].attn.attn_dim == width - d
    round_trip = saved_and_loaded(_vit(seed=1), tmp_path / "small.safetensors")
    loaded = assert_compacts_exactly(model, (x,), compact=round_trip)
    assert loaded.blocks[0].attn.num_heads == attn0.num_heads - 1


def test_a_head_whose_values_are_a_nonzero_constant_stays() -> None:
    model = _vit()
    attn = model.blocks[0].attn
    d, width = attn.head_dim, attn.num_heads * attn.head_dim
    with torch.no_grad():
        attn.qkv.weight[2 * width : 2 * width + d] = 0  # value weights zero, value bias not
        attn.qkv.bias[2 * width : 2 * width + d] = 0.5
    small = assert_compacts_exactly(model, (torch.randn(2, 3, 32, 32),), fewer_params=False)
    assert small.blocks[0].attn.num_heads == attn.num_heads


def test_every_head_zeroed_keeps_one() -> None:
    model = _vit()
    attn = model.blocks[1].attn
    width = attn.num_heads * attn.head_dim
    _zero_rows(attn.qkv, slice(2 * width, 3 * width))
    small = assert_compacts_exactly(model, (torch.randn(2, 3, 32, 32),))
    assert small.blocks[1].attn.num_heads == 1


def test_coupled_groups_leave_head_channels_to_heads() -> None:
    from shrinkage.groups import CoupledChannels

    model = _vit()
    chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    groups = CoupledChannels((1, 3, 32, 32)).build_for(model, chosen)
    labels = " ".join(g.label for g in groups)
    assert "attn.qkv" not in labels and "attn.proj" not in labels  # heads are not channel groups
    assert "mlp.fc1" in labels


# -- Hugging Face transformers ---------------------------------------------------------


def test_bert_loses_a_head_and_keeps_its_own_forward() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64)  # fmt: skip
    model = transformers.BertModel(config).eval()
    _zero_rows(model.encoder.layer[0].attention.self.value, slice(8, 16))
    small = assert_compacts_exactly(model, (_ids(),))
    attn = small.encoder.layer[0].attention
    assert (attn.self.query.out_features, attn.self.num_attention_heads, attn.output.dense.in_features) == (24, 3, 24)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, 5:] = 0  # padding: the model's own masking path runs on the fewer heads
    expected = model(_ids(3), attention_mask=mask).last_hidden_state
    torch.testing.assert_close(small(_ids(3), attention_mask=mask).last_hidden_state, expected, rtol=1e-5, atol=1e-5)


def _gpt2(seed: int = 0) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                     bos_token_id=1, eos_token_id=2)  # fmt: skip
    return transformers.GPT2LMHeadModel(config).eval()


def test_gpt2_fused_conv1d_loses_a_head_and_generates_the_same_tokens(tmp_path) -> None:
    model = _gpt2()
    _zero_rows(model.transformer.h[1].attn.c_attn, slice(64 + 8, 64 + 16))  # value rows of head 1
    _zero_rows(model.transformer.h[0].mlp.c_fc, slice(0, 5))
    round_trip = saved_and_loaded(_gpt2(1), tmp_path / "small.safetensors")
    loaded = assert_compacts_exactly(model, (_ids(),), compact=round_trip)
    assert loaded.transformer.h[1].attn.num_heads == 3 and loaded.transformer.h[0].mlp.c_fc.nf == 128 - 5
    small = assert_compacts_exactly(model, (_ids(),))
    attn = small.transformer.h[1].attn
    shapes = (attn.c_attn.weight.shape[1], attn.c_proj.weight.shape[0])
    assert (attn.num_heads, attn.split_size, *shapes) == (3, 24, 72, 24)
    prompt = _ids(5)[:1, :4]
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(small.generate(prompt, **kwargs), model.generate(prompt, **kwargs))


def _llama(seed: int = 0) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    return transformers.LlamaModel(config).eval()


def test_llama_grouped_query_attention_loses_a_key_value_head_with_its_query_heads(tmp_path) -> None:
    model = _llama()
    attn0, attn1 = model.layers[0].self_attn, model.layers[1].self_attn
    _zero_rows(attn0.v_proj, slice(8, 16))  # key/value head 1: query heads 2 and 3 read it
    with torch.no_grad():
        attn1.o_proj.weight[:, 0:8] = 0  # query head 0 unread, but head 1 shares its key/value head
    small = assert_compacts_exactly(model, (_ids(),))
    a0, a1 = small.layers[0].self_attn, small.layers[1].self_attn
    assert (a0.q_proj.out_features, a0.k_proj.out_features, a0.v_proj.out_features) == (16, 8, 8)
    assert a0.o_proj.in_features == 16
    assert a1.q_proj.out_features == 32  # half a group unread is not a group
    assert_compacts_exactly(model, (_ids(),), compact=saved_and_loaded(_llama(seed=1), tmp_path / "small.safetensors"))


def test_hf_vit_loses_a_head() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    image_size=16, patch_size=8)  # fmt: skip
    model = transformers.ViTModel(config).eval()
    with torch.no_grad():
        model.layers[0].attention.o_proj.weight[:, 24:32] = 0  # head 3 unread
    small = assert_compacts_exactly(model, (torch.randn(2, 3, 16, 16),))
    assert small.layers[0].attention.q_proj.out_features == 24
    assert small.layers[0].attention.num_attention_heads == 3


def test_distilbert_loses_a_head() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                           max_position_embeddings=32)  # fmt: skip
    model = transformers.DistilBertModel(config).eval()
    _zero_rows(model.transformer.layer[1].attention.v_lin, slice(0, 8))
    small = assert_compacts_exactly(model, (_ids(),))
    attn = small.transformer.layer[1].attention
    assert (attn.n_heads, attn.q_lin.out_features, attn.out_lin.in_features) == (3, 24, 24)


# -- a user's own attention ------------------------------------------------------------


class MyAttention(nn.Module):
    def __init__(self, width: int = 24, heads: int = 3, return_probs: bool = False) -> None:
        super().__init__()
        self.heads, self.head_size, self.return_probs = heads, width // heads, return_probs
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        b, t, _ = x.shape

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, self.heads, self.head_size).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        probs = (q @ k.transpose(-2, -1) / self.head_size**0.5).softmax(-1)
        y = self.out((probs @ v).transpose(1, 2).reshape(b, t, self.heads * self.head_size))
        return (y, probs) if self.return_probs else y


class Block(nn.Module):
    def __init__(self, return_probs: bool = False) -> None:
        super().__init__()
        self.attn = MyAttention(return_probs=return_probs)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: Tensor) -> Tensor:
        y = self.attn(x)
        if isinstance(y, tuple):
            return self.fc(F.relu(y[0])) + y[1].mean()
        return self.fc(F.relu(y))


def _set_heads(m: nn.Module, query: int, key_value: int) -> None:
    m.heads = query


@pytest.fixture
def my_attention_registered():
    register_attention_type(AttentionType(
        (MyAttention,), lambda m: HeadCounts(m.heads, m.heads, m.head_size), _set_heads, "q", "k", "v", output="out",
    ))  # fmt: skip
    yield
    from shrinkage.compact import attention_types

    attention_types._REGISTRY.pop(MyAttention, None)


def test_a_registered_user_attention_loses_heads(my_attention_registered) -> None:
    torch.manual_seed(0)
    model = Block().eval()
    _zero_rows(model.attn.v, slice(8, 16))
    small = assert_compacts_exactly(model, (torch.randn(2, 5, 24),))
    assert small.attn.heads == 2 and small.attn.out.in_features == 16
    assert attention_type_of(model.attn) is not None


def test_attention_whose_inside_leaves_the_module_keeps_its_heads(my_attention_registered) -> None:
    torch.manual_seed(0)
    model = Block(return_probs=True).eval()
    _zero_rows(model.attn.v, slice(8, 16))
    small = assert_compacts_exactly(model, (torch.randn(2, 5, 24),), fewer_params=False)
    assert small.attn.heads == 3 and small.attn.v.out_features == 24


def test_unregistered_attention_keeps_its_heads() -> None:
    torch.manual_seed(0)
    model = Block().eval()
    _zero_rows(model.attn.v, slice(8, 16))
    small = assert_compacts_exactly(model, (torch.randn(2, 5, 24),), fewer_params=False)
    assert small.attn.v.out_features == 24


# -- heads as groups: regularization and budgets ---------------------------------------


def test_head_groups_of_grouped_query_attention_hold_each_key_value_head_with_its_query_heads() -> None:
    from shrinkage.groups.kinds import Heads

    model = _llama()
    attn = model.layers[0].self_attn
    (grouping,) = Heads().build("layers.0.self_attn", attn)
    assert grouping.n_groups == 2  # key/value heads; each with 2 query heads of 8 channels
    matrix = grouping.gather()
    matrix[1] = 0
    grouping.scatter_(matrix)
    assert attn.v_proj.weight[8:16].abs().sum() == 0 and attn.q_proj.weight[16:32].abs().sum() == 0
    assert attn.o_proj.weight[:, 16:32].abs().sum() == 0 and attn.q_proj.weight[:16].abs().sum() > 0
    small = assert_compacts_exactly(model, (_ids(),))
    assert small.layers[0].self_attn.q_proj.out_features == 16


def test_prune_to_a_parameter_budget_removes_timm_heads() -> None:
    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # two heads far weaker than the rest: the cheapest removal by norm
        for block in model.blocks:
            d, width = block.attn.head_dim, block.attn.num_heads * block.attn.head_dim
            for start in (0, width, 2 * width):
                block.attn.qkv.weight[start : start + d] *= 1e-3
            block.attn.proj.weight[:, :d] *= 1e-3
    # one head of each block is 5.3% of the parameters: 0.9 is met by removing both
    result = shrinkage.prune(model, (x,), shrinkage.Budget(params=0.9))
    assert result.achieved.params <= 0.9
    heads = [b.attn.num_heads for b in result.compact.blocks]
    assert min(heads) < model.blocks[0].attn.num_heads
    torch.testing.assert_close(result.compact(x), result.model(x), rtol=1e-4, atol=1e-5)


def test_under_torch_fx_hand_written_attention_keeps_its_channels_exactly() -> None:
    """torch.fx sees the attention op by op: its products and softmax keep the channels
    they read (its heads stay), and the layers around it still shrink."""
    torch.manual_seed(0)
    model = Block().eval()
    _zero_rows(model.attn.v, slice(8, 16))  # a head export would remove
    with torch.no_grad():
        model.fc.weight[:, :3] = 0  # three attention outputs nobody reads
    options = shrinkage.CompactOptions(capture=shrinkage.Capture.FX)
    small = assert_compacts_exactly(model, (torch.randn(2, 5, 24),), options=options)
    assert small.attn.out.out_features == 21 and small.attn.v.out_features == 24
