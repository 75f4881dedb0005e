"""GPT-2-style decoder and BERT-style encoder: MLP neurons and attention heads are
removed exactly, whole sub-blocks too; the residual stream (normalized by LayerNorm)
is kept, as documented."""

from __future__ import annotations

import torch
from torch import nn

import shrinkage
from shrinkage.compact import max_output_difference
from shrinkage.groups import CoupledChannels, Heads
from shrinkage.layers import HeadPrunedAttention, removable_heads
from shrinkage.optim import ModuleType, NamePattern, ProximalOptimizer, Regularizer, Rule
from shrinkage.penalties import GroupLasso

from support.exactness import assert_compacts_exactly

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
    small = assert_compacts_exactly(model, ids)
    assert small.blocks[0].mlp.fc.out_features == small.blocks[0].mlp.proj.in_features == 4 * E - 4 * E // 3
    assert small.head.weight is small.tok.weight


def test_bert_mlp_neurons_are_removed_exactly() -> None:
    torch.manual_seed(0)
    model, ids = BERT().eval(), _ids()
    _zero_mlp_neurons(model, ids)
    small = assert_compacts_exactly(model, ids)
    assert small.blocks[1].mlp.fc.out_features == 4 * E - 4 * E // 3


def test_gpt_heads_and_neurons_trained_to_zero_by_proximal_group_lasso_are_removed() -> None:
    torch.manual_seed(0)
    model, ids = GPT(), _ids()
    with torch.no_grad():  # weaker even heads, so the penalty removes those first
        for block in model.blocks:
            (grouping,) = Heads().build("attn", block.attn)
            grouping.scatter_(grouping.gather() * torch.tensor([0.2, 1.0, 0.2, 1.0]).unsqueeze(1))
    rules = [
        Rule(ModuleType((nn.MultiheadAttention,)), Heads(), GroupLasso(2.0)),
        Rule(NamePattern("*.mlp.fc"), CoupledChannels(tuple(ids.shape), vocab=VOCAB), GroupLasso(0.3)),
    ]
    opt = ProximalOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Regularizer(model, rules))
    targets = torch.randint(0, VOCAB, ids.shape, generator=torch.Generator().manual_seed(2))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(ids).flatten(0, 1), targets.flatten()).backward()
        opt.step()
    model.eval()
    gone = [int(removable_heads(f"blocks.{i}.attn", model.blocks[i].attn).sum()) for i in range(2)]
    assert gone == [2, 2]  # whole heads reached exactly zero: q, k, v and output together
    small = assert_compacts_exactly(model, ids)
    for i in range(2):
        attn = small.blocks[i].attn
        assert (attn.num_heads if isinstance(attn, HeadPrunedAttention) else HEADS) == HEADS - gone[i]


def test_gpt_sub_blocks_with_every_head_or_neuron_zeroed_are_removed(tmp_path) -> None:
    torch.manual_seed(0)
    model, ids = GPT().eval(), _ids()
    with torch.no_grad():
        model.blocks[0].attn.out_proj.weight.zero_()  # no head of block 0 is read
        model.blocks[1].mlp.fc.weight.zero_()  # no neuron of block 1 is fed...
        model.blocks[1].mlp.fc.bias.zero_()  # ...or biased
    small = assert_compacts_exactly(model, ids)
    assert small.blocks[0].attn.num_heads == 0
    assert small.blocks[1].mlp.fc.out_features == small.blocks[1].mlp.proj.in_features == 0
    loaded = shrinkage.load(shrinkage.save(small, tmp_path / "gpt.safetensors"), GPT()).eval()
    assert max_output_difference(small, loaded, (_ids(),)) == 0
    assert loaded.head.weight is loaded.tok.weight  # still tied after the round trip
