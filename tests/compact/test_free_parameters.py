"""Free tensors: layer scales, position embeddings and class tokens sliced with the channels they meet.

A parameter or buffer of a module without layer type that an op meets channel by channel
(``x * self.gamma``, ``x + self.pos``, ``cat([self.cls.expand(B, -1, -1), x], 1)``) is sliced
with those channels under the ``torch.export`` capture, so a residual stream carrying one
still narrows; ``shrinkage.save`` records the new shapes and ``shrinkage.load`` restores them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

import shrinkage
from shrinkage.compact import CompactOptions
from shrinkage.compact.layout_schema import LayoutError
from shrinkage.compact.plan import decide
from shrinkage.graph.capture import Capture, capture_channel_graph

from support.exactness import assert_compacts_exactly

ZEROED = (2, 5)


def compact(model: nn.Module, inputs: tuple[Any, ...], options: CompactOptions | None = None) -> nn.Module:
    """shrinkage.compact (it checks the outputs on ``inputs``), re-checked here as well."""
    small = shrinkage.compact(model, inputs, options)
    with torch.no_grad():
        assert torch.allclose(small(*inputs), model(*inputs), atol=1e-5)
    return small


class Block(nn.Module):
    def __init__(self, c: int, *, buffer: bool = False, persistent: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        gamma = torch.rand(c, 1, 1) + 0.5
        if buffer:
            self.register_buffer("gamma", gamma, persistent=persistent)
        else:
            self.gamma = nn.Parameter(gamma)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gamma * self.bn(self.conv(x))


class Net(nn.Module):
    def __init__(self, **block: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.sbn = nn.BatchNorm2d(8)
        self.b1, self.b2 = Block(8, **block), Block(8, **block)
        self.head = nn.Linear(8, 4)
        self.pos = nn.Parameter(torch.randn(1, 8, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.sbn(self.stem(x)) + self.pos
        x = self.b2(self.b1(x))
        return self.head(x.mean((2, 3)))


def zero_stream_channel(m: Net, c: int, *, pos: bool = True, read_by_blocks: bool = False) -> None:
    """Channel ``c`` of the residual stream: no producer writes it, no consumer reads it."""
    with torch.no_grad():
        m.stem.weight[c] = 0
        m.stem.bias[c] = 0
        m.sbn.weight[c] = 0
        m.sbn.bias[c] = 0
        if pos:
            m.pos[0, c] = 0
        for b in (m.b1, m.b2):
            b.conv.weight[c] = 0
            b.conv.bias[c] = 0
            b.bn.weight[c] = 0
            b.bn.bias[c] = 0
            if not read_by_blocks:
                b.conv.weight[:, c] = 0
            b.gamma[c] = 0
        m.head.weight[:, c] = 0


def zeroed_net(**block: bool) -> Net:
    torch.manual_seed(0)
    m = Net(**block).eval()
    for c in ZEROED:
        zero_stream_channel(m, c)
    return m


def images(batch: int = 2) -> tuple[Tensor]:
    return (torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(1)),)


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_layer_scale_and_position_embedding_are_sliced_with_the_stream() -> None:
    m = zeroed_net()
    small = assert_compacts_exactly(m, images(), compact=compact)
    got = shapes(small)
    assert got["pos"] == (1, 6, 1, 1)
    assert got["b1.gamma"] == got["b2.gamma"] == (6, 1, 1)
    assert got["stem.weight"][0] == got["b1.conv.weight"][1] == got["b2.conv.weight"][0] == 6
    assert got["head.weight"] == (4, 6)
    kept = [c for c in range(8) if c not in ZEROED]
    assert torch.equal(small.pos.detach(), m.pos.detach()[:, kept])
    assert torch.equal(small.b1.gamma.detach(), m.b1.gamma.detach()[kept])
    assert isinstance(small.b1.gamma, nn.Parameter) and small.b1.gamma.requires_grad


def test_the_plan_lists_the_free_tensors_and_leaves_them_whole_unless_asked() -> None:
    m = zeroed_net()
    graph = capture_channel_graph(m, images())
    plan = decide(graph, free_tensors=True)
    listed = json.loads(json.dumps(plan.to_dict()))["tensors"]
    assert listed["pos"] == {"dim": 1, "kept": [0, 1, 3, 4, 6, 7]}
    assert listed["b1.gamma"]["dim"] == 0
    # a caller that does not slice free tensors keeps the channels they meet
    whole = decide(graph)
    assert not whole.free_tensors and ("stem", 0) not in whole.keep


def test_save_load_round_trip_restores_the_sliced_tensors(tmp_path: Path) -> None:
    m = zeroed_net()
    small = compact(m, images())
    path = shrinkage.save(small, tmp_path / "net.safetensors")
    loaded = shrinkage.load(path, Net()).eval()
    assert shapes(loaded) == shapes(small)
    x = images(5)
    with torch.no_grad():
        assert torch.equal(loaded(*x), small(*x))
        assert torch.allclose(loaded(*x), m(*x), atol=1e-5)
    assert isinstance(loaded.pos, nn.Parameter)


def _rewrite_metadata(path: Path, out: Path, **changes: str) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (a handle, not a dict)
    metadata.update(changes)
    save_file(tensors, str(out), metadata=metadata)


def test_load_checks_the_free_tensor_shapes(tmp_path: Path) -> None:
    small = compact(zeroed_net(), images())
    path = shrinkage.save(small, tmp_path / "net.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        listed = json.loads(handle.metadata()["tensors"])
    assert listed["pos"] == [1, 6, 1, 1] and listed["b2.gamma"] == [6, 1, 1]
    larger = dict(listed, pos=[1, 9, 1, 1])
    _rewrite_metadata(path, tmp_path / "larger.safetensors", tensors=json.dumps(larger))
    with pytest.raises(LayoutError, match=r"tensors\['pos'\].*only shrinks"):
        shrinkage.load(tmp_path / "larger.safetensors", Net())
    # a file that does not say the tensor was sliced is refused by the header check, naming it
    _rewrite_metadata(path, tmp_path / "unsaid.safetensors", tensors=json.dumps(dict(listed, pos=[1, 8, 1, 1])))
    with pytest.raises(LayoutError, match="'pos'"):
        shrinkage.load(tmp_path / "unsaid.safetensors", Net())
    # a layer's own tensor is sized by its layout entry, never by this list
    _rewrite_metadata(path, tmp_path / "layer.safetensors", tensors=json.dumps(dict(listed, **{"head.bias": [3]})))
    with pytest.raises(LayoutError, match=r"tensors\['head.bias'\]"):
        shrinkage.load(tmp_path / "layer.safetensors", Net())


def test_a_non_zero_entry_keeps_a_channel_a_padded_conv_reads() -> None:
    """Channel 3 gets no input but a non-zero position entry, and the blocks' convs (padded)
    read it: a constant the padding would turn into a border pattern, so it stays."""
    m = zeroed_net()
    zero_stream_channel(m, 3, pos=False, read_by_blocks=True)
    with torch.no_grad():
        m.pos[0, 3] = 1.5
        m.head.weight[:, 3] = 0.3
    small = assert_compacts_exactly(m, images(), compact=compact)
    assert shapes(small)["pos"] == (1, 6, 1, 1)  # only the two zero channels went
    assert float(small.pos.detach()[0, 2]) == 1.5  # channel 3, now third


def test_a_non_zero_entry_is_folded_where_only_a_linear_reads_it() -> None:
    """Channel 3 carries the position entry alone, and only the head reads it: a constant
    that the head's bias absorbs, so it goes too."""
    m = zeroed_net()
    zero_stream_channel(m, 3, pos=False)
    with torch.no_grad():
        m.pos[0, 3] = 1.5
        m.head.weight[:, 3] = 0.3
    small = assert_compacts_exactly(m, images(), compact=compact)
    assert shapes(small)["pos"] == (1, 5, 1, 1)


def test_a_buffer_is_sliced_and_stays_a_saved_buffer(tmp_path: Path) -> None:
    m = zeroed_net(buffer=True)
    small = assert_compacts_exactly(m, images(), compact=compact)
    assert small.b1.gamma.shape == (6, 1, 1) and "b1.gamma" in dict(small.named_buffers())
    assert "b1.gamma" in small.state_dict()
    loaded = shrinkage.load(shrinkage.save(small, tmp_path / "net.safetensors"), Net(buffer=True)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(*images()), small(*images()))


def test_a_non_persistent_buffer_keeps_its_channels() -> None:
    """Not saved, so a sliced copy could not be loaded again: the channels it meets stay."""
    m = zeroed_net(buffer=True, persistent=False)
    small = assert_compacts_exactly(m, images(), compact=compact, fewer_params=False)
    assert small.b1.gamma.shape == (8, 1, 1) and small.pos.shape == (1, 8, 1, 1)


class TwiceScaled(nn.Module):
    """``gamma`` read by two ops: one slicing cannot be checked against both, so it stays."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.gamma * (x + self.gamma * self.conv(x))


def test_a_parameter_read_twice_or_tied_keeps_its_channels() -> None:
    torch.manual_seed(0)
    twice = nn.Sequential(nn.Conv2d(3, 8, 1), TwiceScaled(8), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        for c in ZEROED:
            twice[0].weight[c] = 0
            twice[0].bias[c] = 0
            twice[1].conv.weight[:, c] = 0
            twice[1].conv.weight[c] = 0
            twice[1].conv.bias[c] = 0
            twice[2].weight[:, c] = 0
    small = assert_compacts_exactly(twice, images(), compact=compact, fewer_params=False)
    assert small[1].gamma.shape == (8, 1, 1) and small[0].weight.shape[0] == 8

    tied = zeroed_net()
    tied.b2.gamma = tied.b1.gamma
    small = assert_compacts_exactly(tied, images(), compact=compact, fewer_params=False)
    assert small.b1.gamma.shape == (8, 1, 1) and small.b2.gamma is small.b1.gamma


def test_a_quotient_by_a_parameter_is_sliced() -> None:
    class Divided(Net):
        def forward(self, x: Tensor) -> Tensor:
            x = self.sbn(self.stem(x)) / (self.pos.abs() + 1)
            return self.head(self.b2(self.b1(x)).mean((2, 3)))

    torch.manual_seed(0)
    m = Divided().eval()
    for c in ZEROED:
        zero_stream_channel(m, c)
    small = assert_compacts_exactly(m, images(), compact=compact, fewer_params=False)
    # pos is read through abs and an add of a number: a computed tensor, so the stream stays
    assert small.pos.shape == (1, 8, 1, 1)

    class Scaled(Block):
        def forward(self, x: Tensor) -> Tensor:
            return x + self.bn(self.conv(x)) / self.gamma

    torch.manual_seed(0)
    m = Net()
    m.b1, m.b2 = Scaled(8), Scaled(8)
    m.eval()
    for c in ZEROED:
        zero_stream_channel(m, c)
    with torch.no_grad():
        for b in (m.b1, m.b2):
            b.gamma.fill_(2.0)
    small = assert_compacts_exactly(m, images(), compact=compact)
    assert small.b1.gamma.shape == (6, 1, 1)


class TokenBlock(nn.Module):
    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, hidden), nn.Linear(hidden, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gamma * self.fc2(F.gelu(self.fc1(x)))


class Tokens(nn.Module):
    """A ViT without norms: a class token, a (1, N, C) position embedding, layer scales."""

    def __init__(self, c: int = 8, tokens: int = 4, patch: int = 12) -> None:
        super().__init__()
        self.embed = nn.Linear(patch, c)
        self.cls = nn.Parameter(torch.randn(1, 1, c))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, c))
        self.blocks = nn.Sequential(TokenBlock(c, 16), TokenBlock(c, 16))
        self.head = nn.Linear(c, 3)

    def forward(self, x: Tensor) -> Tensor:
        t = self.embed(x)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(self.blocks(t)[:, 0])


def test_class_token_position_embedding_and_layer_scales_of_a_token_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = Tokens().eval()
    with torch.no_grad():
        for c in ZEROED:
            m.embed.weight[c] = 0
            m.embed.bias[c] = 0
            m.cls[..., c] = 0
            m.pos[..., c] = 0
            for b in m.blocks:
                b.fc1.weight[:, c] = 0
                b.fc2.weight[c] = 0
                b.fc2.bias[c] = 0
            m.head.weight[:, c] = 0
    x = (torch.randn(2, 4, 12),)
    small = assert_compacts_exactly(m, x, compact=compact)
    got = shapes(small)
    assert got["cls"] == (1, 1, 6) and got["pos"] == (1, 5, 6) and got["blocks.0.gamma"] == (6,)
    assert got["embed.weight"] == (6, 12) and got["head.weight"] == (3, 6)
    loaded = shrinkage.load(shrinkage.save(small, tmp_path / "tokens.safetensors"), Tokens()).eval()
    fresh = (torch.randn(3, 4, 12),)
    with torch.no_grad():
        assert torch.equal(loaded(*fresh), small(*fresh))


def test_the_fx_capture_slices_free_tensors_too() -> None:
    options = CompactOptions(capture=Capture.FX)
    small = assert_compacts_exactly(zeroed_net(), images(), compact=lambda m, x: compact(m, x, options))
    assert small.pos.shape == (1, 6, 1, 1) and small.b1.gamma.shape == (6, 1, 1)
    torch.manual_seed(0)
    tokens = Tokens().eval()
    with torch.no_grad():
        for c in ZEROED:
            tokens.embed.weight[c] = 0
            tokens.cls[..., c] = 0
            for b in tokens.blocks:
                b.fc1.weight[:, c] = 0
                b.fc2.weight[c] = 0
            tokens.head.weight[:, c] = 0
    small = assert_compacts_exactly(tokens, (torch.randn(2, 4, 12),), compact=lambda m, x: compact(m, x, options))
    assert small.cls.shape == (1, 1, 6) and small.pos.shape == (1, 5, 6)


def test_coupled_groups_include_the_free_tensors_of_the_stream_even_on_the_model_itself() -> None:
    """The group of a stream channel holds its position entry (a tensor of the model itself,
    module name "") and each block's layer-scale entry: group Lasso drives them to zero with
    the rest of the channel, so compaction can remove it."""
    from shrinkage.groups import CoupledChannels

    m = Net().eval()
    chosen = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d | nn.Linear)]
    groups = CoupledChannels((1, 3, 16, 16)).build_for(m, chosen)
    stream = [g for g in groups if any(p is m.pos for p, _, _ in g.members)]
    assert len(stream) == 1
    members = {id(p) for p, _, _ in stream[0].members}
    assert {id(m.pos), id(m.b1.gamma), id(m.b2.gamma), id(m.stem.weight), id(m.head.weight)} <= members
