"""Hugging Face transformers models (small configs, random weights): captured with
torch.export, MLP neurons removed exactly (GPT-2's ``Conv1D`` included), the model's own
forward keeps working."""

from __future__ import annotations

import pytest
import torch
from support.exactness import assert_compacts_exactly

transformers = pytest.importorskip("transformers")

VOCAB, WIDTH, INNER = 64, 32, 64


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(seed))


def _zero_neurons(fc_out: torch.Tensor, fc_bias: torch.Tensor | None, rows: list[int]) -> None:
    """Neurons ``rows`` of an MLP's first layer: zero weight rows (canonical) and biases."""
    with torch.no_grad():
        fc_out[rows] = 0
        if fc_bias is not None:
            fc_bias[rows] = 0


def test_bert_loses_zeroed_intermediate_neurons() -> None:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=INNER)  # fmt: skip
    model = transformers.BertModel(config).eval()
    dense = model.encoder.layer[0].intermediate.dense
    _zero_neurons(dense.weight, dense.bias, [0, 5, 9])
    small = assert_compacts_exactly(model, (_ids(),))
    assert small.encoder.layer[0].intermediate.dense.out_features == INNER - 3


def test_gpt2_conv1d_layers_shrink() -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=2, n_head=4, n_inner=INNER)
    model = transformers.GPT2Model(config).eval()
    fc = model.h[1].mlp.c_fc  # Conv1D: weight (in, out)
    _zero_neurons(fc.weight.T, fc.bias, [1, 2, 30])
    small = assert_compacts_exactly(model, (_ids(),))
    assert small.h[1].mlp.c_fc.weight.shape == (WIDTH, INNER - 3)
    assert small.h[1].mlp.c_proj.weight.shape == (INNER - 3, WIDTH)


def test_llama_gated_mlp_loses_a_neuron_zeroed_in_the_gate_only() -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=INNER,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = transformers.LlamaModel(config).eval()
    mlp = model.layers[0].mlp
    _zero_neurons(mlp.gate_proj.weight, None, [3, 4])  # silu(0) * up == 0 whatever up is
    small = assert_compacts_exactly(model, (_ids(),))
    assert small.layers[0].mlp.up_proj.out_features == INNER - 2


def test_hf_vit_on_pixels() -> None:
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=INNER, image_size=16, patch_size=8)  # fmt: skip
    model = transformers.ViTModel(config).eval()
    with torch.no_grad():
        model.layers[1].mlp.fc2.weight[:, :4] = 0  # four intermediate neurons that nobody reads
    small = assert_compacts_exactly(model, (torch.randn(2, 3, 16, 16),))
    assert small.layers[1].mlp.fc1.out_features == INNER - 4


def test_coupled_groups_of_gpt2_cover_conv1d_in_its_stored_orientation() -> None:
    from shrinkage.groups import CoupledChannels

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=1, n_head=4, n_inner=INNER)
    model = transformers.GPT2Model(config).eval()
    fc = model.h[0].mlp.c_fc
    chosen = [("h.0.mlp.c_fc", fc)]
    groups = CoupledChannels((2, 7), vocab=VOCAB).build_for(model, chosen)
    assert len(groups) == 1
    with torch.no_grad():  # zeroing neurons 0..9 through the group removes them
        matrix = groups[0].gather()
        matrix[:10] = 0
        groups[0].scatter_(matrix)
    assert fc.weight[:, :10].abs().sum() == 0 and model.h[0].mlp.c_proj.weight[:10].abs().sum() == 0
    small = assert_compacts_exactly(model, (_ids(),))
    assert small.h[0].mlp.c_fc.weight.shape == (WIDTH, INNER - 10)


def test_a_compacted_gpt2_generates_the_same_tokens_with_its_own_generate() -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=2, n_head=4, n_inner=INNER,
                                     bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).eval()
    for block in model.transformer.h:
        _zero_neurons(block.mlp.c_fc.weight.T, block.mlp.c_fc.bias, [0, 7, 8, 40])
    small = assert_compacts_exactly(model, (_ids(),))
    assert small.transformer.h[0].mlp.c_fc.weight.shape == (WIDTH, INNER - 4)
    prompt = _ids(seed=3)
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=5, do_sample=False)
        got = small.generate(prompt, max_new_tokens=5, do_sample=False)
    assert torch.equal(got, expected)
