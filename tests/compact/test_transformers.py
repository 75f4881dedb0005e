"""GPT-2-style decoder and BERT-style encoder: MLP neurons are removed exactly; the
residual stream (normalized by LayerNorm) and attention are kept, as documented."""

from __future__ import annotations

import torch
from support.sparsity import param_count
from torch import nn

import shrinkage
from shrinkage.compact import max_output_difference
from shrinkage.groups import CoupledChannels

E, HEADS, T, VOCAB = 32, 4, 8, 50


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(E, 4 * E)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * E, E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class DecoderBlock(nn.Module):
    """Pre-LN block as in GPT-2."""

    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(E), nn.LayerNorm(E)
        self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.mlp = MLP()
        self.register_buffer("mask", torch.triu(torch.full((T, T), float("-inf")), diagonal=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, E)
        self.pos = nn.Parameter(torch.randn(1, T, E) * 0.02)
        self.blocks = nn.Sequential(*[DecoderBlock() for _ in range(layers)])
        self.ln_f = nn.LayerNorm(E)
        self.head = nn.Linear(E, VOCAB, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(self.blocks(self.tok(ids) + self.pos)))


class EncoderBlock(nn.Module):
    """Post-LN block as in BERT."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.ln1, self.ln2 = nn.LayerNorm(E), nn.LayerNorm(E)
        self.mlp = MLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attn(x, x, x, need_weights=False)[0])
        return self.ln2(x + self.mlp(x))


class BERT(nn.Module):
    def __init__(self, layers: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.tok, self.pos, self.seg = nn.Embedding(VOCAB, E), nn.Embedding(T, E), nn.Embedding(2, E)
        self.ln = nn.LayerNorm(E)
        self.blocks = nn.Sequential(*[EncoderBlock() for _ in range(layers)])
        self.pooler = nn.Linear(E, E)
        self.classifier = nn.Linear(E, classes)
        self.register_buffer("positions", torch.arange(T).unsqueeze(0))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.ln(self.tok(ids) + self.pos(self.positions) + self.seg(torch.zeros_like(ids)))
        x = self.blocks(x)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


def _zero_mlp_neurons(model: nn.Module, ids: torch.Tensor) -> None:
    chosen = [(n, m) for n, m in model.named_modules() if n.endswith("mlp.fc")]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for g in CoupledChannels(tuple(ids.shape), vocab=VOCAB).build_for(model, chosen):
            matrix = g.gather()
            matrix[torch.randperm(matrix.shape[0], generator=gen)[: matrix.shape[0] // 3]] = 0
            g.scatter_(matrix)


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, T), generator=torch.Generator().manual_seed(1))


def _coupled_of(model: nn.Module, ids: torch.Tensor) -> list[str]:
    chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return [g.label for g in CoupledChannels(tuple(ids.shape), vocab=VOCAB).build_for(model, chosen)]


def test_gpt_mlp_neurons_are_removed_exactly_and_tied_weights_survive() -> None:
    torch.manual_seed(0)
    model, ids = GPT().eval(), _ids()
    assert sorted(_coupled_of(model, ids)) == ["blocks.0.mlp.fc", "blocks.1.mlp.fc"]  # the residual stream is kept
    _zero_mlp_neurons(model, ids)
    small = shrinkage.compact(model, (ids,))
    assert max_output_difference(model, small, (_ids(),)) <= 1e-5
    assert small.blocks[0].mlp.fc.out_features == small.blocks[0].mlp.proj.in_features == 4 * E - 4 * E // 3
    assert param_count(small) < param_count(model)
    assert small.head.weight is small.tok.weight


def test_bert_mlp_neurons_are_removed_exactly() -> None:
    torch.manual_seed(0)
    model, ids = BERT().eval(), _ids()
    _zero_mlp_neurons(model, ids)
    small = shrinkage.compact(model, (ids,))
    assert max_output_difference(model, small, (_ids(),)) <= 1e-5
    assert small.blocks[1].mlp.fc.out_features == 4 * E - 4 * E // 3
    assert param_count(small) < param_count(model)
