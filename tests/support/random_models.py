"""Seeded random architectures for fuzzing compaction, and the classifier of one run.

``random_model(seed)`` combines the pieces compaction supports (convs with padding,
stride and dilation, depthwise convs, Linear on 2-D and 3-D inputs, BatchNorm, PReLU,
activations including in-place ones, pooling, flatten/view, residual add/sub/mul,
cat/split/chunk, squeeze-excitation gates, in-place tensor ops, modules called twice,
``nn.MultiheadAttention``, attention written by hand (fused or separate projections,
grouped-query, with or without an output projection); float32 or float64) and zeroes
random structures: rows, columns, filter-shape columns, whole layers, BatchNorm scales,
attention heads.

``fuzz_one(seed)`` compacts the model on its example inputs and compares it with the
original on fresh inputs (another batch and, where the model allows, other spatial
sizes); the :class:`Outcome` says which of exact / nothing removable / refused / wrong /
self-check failure / raw exception happened.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import shrinkage
from shrinkage.compact import AttentionType, CompactOptions, HeadCounts, max_output_difference, register_attention_type
from shrinkage.compact.choice import ByMacs
from shrinkage.errors import ShrinkageError
from shrinkage.groups import Heads

# the four tensor layouts a value can have
IMAGE = "image"  # (N, C, H, W)
SIGNAL = "signal"  # (N, C, L)
SEQUENCE = "sequence"  # (N, T, C)
FEATURES = "features"  # (N, F)

Step = Callable[[nn.Module, list[Tensor]], Tensor]


@dataclass
class Value:
    """What the generator knows of one intermediate tensor."""

    layout: str
    channels: int
    size: tuple[int, ...]  # spatial dims (H, W), (L,), (T,) or ()
    aliases_input: bool = False  # a view of the model input: never mutated in place


class RandomNet(nn.Module):
    """Runs a list of steps; step ``i`` sees the values of the input and the steps before it."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[Step] = []
        self.description: list[str] = []

    def forward(self, x: Tensor) -> Tensor:
        values = [x]
        for step in self.steps:
            values.append(step(self, values))
        return values[-1]


def _call(name: str, src: int) -> Step:
    return lambda net, v: getattr(net, name)(v[src])


class HandAttention(nn.Module):
    """Attention written by hand, in the variants real models use: one fused qkv Linear or
    three, grouped-query (``kv_heads < heads``), the scaled-dot-product kernel or an
    explicit softmax, with or without an output projection inside (without, the merged
    heads leave the module, as in BERT). Registered as an attention type below."""

    def __init__(self, width: int, heads: int, kv_heads: int, head_dim: int, fused: bool, out: bool, sdpa: bool,
                 bias: bool) -> None:  # fmt: skip
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.sdpa = heads, kv_heads, head_dim, sdpa
        q, kv = heads * head_dim, kv_heads * head_dim
        if fused:
            self.qkv = nn.Linear(width, q + 2 * kv, bias=bias)
        else:
            self.q, self.k, self.v = nn.Linear(width, q, bias=bias), nn.Linear(width, kv), nn.Linear(width, kv, bias=bias)
        self.out = nn.Linear(q, width) if out else None

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        if hasattr(self, "qkv"):
            q, k, v = self.qkv(x).split([q_width, kv_width, kv_width], dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q = q.view(b, t, -1, self.head_dim).transpose(1, 2)
        k, v = (y.view(b, t, -1, self.head_dim).transpose(1, 2) for y in (k, v))
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = ((q @ k.transpose(-2, -1)) * self.head_dim**-0.5).softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(b, t, -1)
        return self.out(y) if self.out is not None else y


def _hand_counts(m: nn.Module) -> HeadCounts:
    d = m.head_dim
    if hasattr(m, "qkv"):  # rows: (heads + 2 kv heads) * d, heads = group * kv heads
        group = m.heads // m.kv_heads
        kv = m.qkv.out_features // d // (group + 2)
        return HeadCounts(kv * group, kv, d)
    return HeadCounts(m.q.out_features // d, m.v.out_features // d, d)


def _hand_set(m: nn.Module, query: int, key_value: int) -> None:
    m.heads, m.kv_heads = query, key_value


def _register_hand_attention() -> None:
    for fused in (True, False):
        for out in (True, False):
            names = {"fused_qkv": "qkv"} if fused else {"query": "q", "key": "k", "value": "v"}
            register_attention_type(AttentionType((_hand_class(fused, out),), _hand_counts, _hand_set, **names,
                                                  output="out" if out else None))  # fmt: skip


_HAND_CLASSES: dict[tuple[bool, bool], type[HandAttention]] = {}


def _hand_class(fused: bool, out: bool) -> type[HandAttention]:
    """One subclass per layout, so each registered type names children its modules have."""
    key = (fused, out)
    if key not in _HAND_CLASSES:
        _HAND_CLASSES[key] = type(f"HandAttention{'Fused' if fused else ''}{'Out' if out else ''}", (HandAttention,), {})
    return _HAND_CLASSES[key]


class _Generator:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.net = RandomNet()
        self.values: list[Value] = []
        self.spatial_free = True  # fresh inputs may have other spatial sizes
        self.reusable: list[tuple[str, Value, Value]] = []  # module, the value it reads, the value it makes

    # -- bookkeeping ------------------------------------------------------------------
    def module(self, m: nn.Module, what: str) -> str:
        name = f"m{len(self.net._modules)}"
        self.net.add_module(name, m)
        self.net.description.append(f"{name}: {what}")
        return name

    def emit(self, step: Step, value: Value, what: str) -> int:
        self.net.steps.append(step)
        self.values.append(value)
        if not any(d.startswith(f"v{len(self.values) - 1}:") for d in self.net.description):
            self.net.description.append(f"v{len(self.values) - 1}: {what}")
        return len(self.values) - 1

    def apply(self, m: nn.Module, src: int, out: Value, what: str, reusable: bool = True) -> int:
        name = self.module(m, what)
        if reusable:
            self.reusable.append((name, self.values[src], out))
        return self.emit(_call(name, src), out, f"{name}(v{src})")

    def same_shape(self, i: int) -> list[int]:
        v = self.values[i]
        return [
            j
            for j, w in enumerate(self.values)
            if j != i and (w.layout, w.channels, w.size) == (v.layout, v.channels, v.size)
        ]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    # -- layers ------------------------------------------------------------------------
    def conv(self, i: int, *, same: bool = False, out: int | None = None) -> int:
        v = self.values[i]
        spatial = len(v.size)
        cls = nn.Conv2d if spatial == 2 else nn.Conv1d
        out = out if out is not None else self.rng.choice([4, 6, 8, 12])
        if same:
            k, stride, dilation = self.rng.choice([1, 3]), 1, 1
            padding = k // 2
        else:
            k = self.rng.choice([1, 2, 3])
            stride, dilation = self.rng.choice([1, 1, 2]), self.rng.choice([1, 1, 2])
            padding = self.rng.choice([0, 0, 1, 2])
        reach = dilation * (k - 1) + 1
        if min(v.size) + 2 * padding < reach + 2 * stride:
            k, stride, dilation, padding = 1, 1, 1, 0
        size = tuple((s + 2 * padding - (dilation * (k - 1) + 1)) // stride + 1 for s in v.size)
        m = cls(v.channels, out, k, stride=stride, padding=padding, dilation=dilation, bias=self.chance(0.7))
        return self.apply(
            m,
            i,
            Value(v.layout, out, size),
            f"{cls.__name__}({v.channels}, {out}, k={k}, s={stride}, p={padding}, d={dilation})",
        )

    def depthwise(self, i: int) -> int:
        v = self.values[i]
        cls = nn.Conv2d if len(v.size) == 2 else nn.Conv1d
        m = cls(v.channels, v.channels, 3, padding=1, groups=v.channels, bias=self.chance(0.5))
        return self.apply(m, i, Value(v.layout, v.channels, v.size), "depthwise conv")

    def linear(self, i: int, out: int | None = None) -> int:
        v = self.values[i]
        out = out if out is not None else self.rng.choice([4, 6, 8, 12, 16])
        return self.apply(
            nn.Linear(v.channels, out, bias=self.chance(0.8)),
            i,
            Value(v.layout, out, v.size),
            f"Linear({v.channels}, {out})",
        )

    def batchnorm(self, i: int) -> int:
        v = self.values[i]
        cls = {IMAGE: nn.BatchNorm2d, SIGNAL: nn.BatchNorm1d, FEATURES: nn.BatchNorm1d}[v.layout]
        return self.apply(cls(v.channels), i, Value(v.layout, v.channels, v.size), cls.__name__)

    def activation(self, i: int) -> int:
        v = self.values[i]
        inplace = not v.aliases_input and self.chance(0.4)
        choices: list[Callable[[], nn.Module]] = [
            lambda: nn.ReLU(inplace=inplace), lambda: nn.Hardswish(inplace=inplace), lambda: nn.LeakyReLU(0.1, inplace=inplace),
            nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
        ]  # fmt: skip
        if v.layout != SEQUENCE:
            choices.append(lambda: nn.PReLU(self.rng.choice([1, v.channels])))
        if self.chance(0.25):  # functional forms
            fn = self.rng.choice([F.relu, torch.sigmoid, F.gelu])
            return self.emit(lambda net, vals, src=i: fn(vals[src]), Value(v.layout, v.channels, v.size), fn.__name__)
        m = self.rng.choice(choices)()
        return self.apply(m, i, Value(v.layout, v.channels, v.size), repr(m))

    def pool(self, i: int) -> int:
        v = self.values[i]
        if v.layout == FEATURES:  # a 1-d pool on (N, F) pools the features (an unbatched input)
            m = self.rng.choice([nn.MaxPool1d(2), nn.AvgPool1d(2)])
            return self.apply(m, i, Value(FEATURES, v.channels // 2, ()), repr(m), reusable=False)
        if min(v.size) < 4 or self.chance(0.3):
            m = nn.AdaptiveAvgPool2d(2) if len(v.size) == 2 else nn.AdaptiveMaxPool1d(2)
            self.spatial_free = self.spatial_free and min(v.size) >= 2
            return self.apply(m, i, Value(v.layout, v.channels, (2,) * len(v.size)), repr(m), reusable=False)
        m = self.rng.choice(
            [nn.MaxPool2d(2), nn.AvgPool2d(2)] if len(v.size) == 2 else [nn.MaxPool1d(2), nn.AvgPool1d(2)]
        )
        return self.apply(m, i, Value(v.layout, v.channels, tuple(s // 2 for s in v.size)), repr(m), reusable=False)

    def attention(self, i: int) -> int:
        v = self.values[i]
        heads = self.rng.choice([h for h in (1, 2, 4) if v.channels % h == 0])
        name = self.module(
            nn.MultiheadAttention(v.channels, heads, batch_first=True), f"MultiheadAttention({v.channels}, {heads})"
        )
        step: Step = lambda net, vals, src=i: getattr(net, name)(vals[src], vals[src], vals[src], need_weights=False)[0]  # noqa: E731
        return self.emit(step, Value(SEQUENCE, v.channels, v.size), f"{name}(v{i}, v{i}, v{i})")

    def hand_attention(self, i: int) -> int:
        v = self.values[i]
        head_dim = self.rng.choice([2, 4])
        kv_heads = self.rng.choice([1, 2])
        heads = kv_heads * self.rng.choice([1, 2])
        fused, out, sdpa = self.chance(0.5), self.chance(0.7), self.chance(0.5)
        m = _hand_class(fused, out)(v.channels, heads, kv_heads, head_dim, fused, out, sdpa, self.chance(0.7))
        width = v.channels if out else heads * head_dim
        what = f"HandAttention({v.channels}, heads={heads}, kv={kv_heads}, d={head_dim}, fused={fused}, out={out}, sdpa={sdpa})"
        return self.apply(m, i, Value(SEQUENCE, width, v.size), what, reusable=False)

    # -- combinations ------------------------------------------------------------------
    def residual(self, i: int) -> int:
        v = self.values[i]
        others = self.same_shape(i)
        if others and self.chance(0.6):
            j = self.rng.choice(others)
        elif v.layout in (IMAGE, SIGNAL):
            j = self.conv(i, same=True, out=v.channels)
        else:
            j = self.linear(i, out=v.channels)
        op = self.rng.choice([torch.add, torch.sub, torch.mul, lambda a, b: a + b, lambda a, b: a - b])
        return self.emit(
            lambda net, vals, a=i, b=j: op(vals[a], vals[b]), Value(v.layout, v.channels, v.size), "residual"
        )

    def concat(self, i: int) -> int:
        v = self.values[i]
        dim = 1 if v.layout != SEQUENCE else 2
        if self.chance(0.3) and v.layout in (IMAGE, SIGNAL, FEATURES):  # one channel twice: cat([bn(y), y])
            j = self.batchnorm(i)
            return self.emit(
                lambda net, vals, a=j, b=i: torch.cat([vals[a], vals[b]], dim),
                Value(v.layout, 2 * v.channels, v.size),
                "cat([bn(y), y])",
            )
        j = self.conv(i, same=True) if v.layout in (IMAGE, SIGNAL) else self.linear(i)
        w = self.values[j]
        return self.emit(
            lambda net, vals, a=i, b=j: torch.cat([vals[a], vals[b]], dim),
            Value(v.layout, v.channels + w.channels, v.size),
            "cat",
        )

    def split(self, i: int) -> int:
        v = self.values[i]
        if v.channels < 2:
            return i
        dim = 1 if v.layout != SEQUENCE else 2
        first = self.rng.randint(1, v.channels - 1)
        if self.chance(0.5):
            pieces: Callable[[Tensor], tuple[Tensor, ...]] = lambda t: torch.split(t, [first, v.channels - first], dim)  # noqa: E731
            widths = [first, v.channels - first]
        else:
            pieces = lambda t: t.chunk(2, dim)  # noqa: E731
            widths = [-(-v.channels // 2), v.channels - -(-v.channels // 2)]
        pick = self.rng.randrange(2)
        if self.chance(0.5) or widths[0] != widths[1]:
            return self.emit(
                lambda net, vals, a=i: pieces(vals[a])[pick],
                Value(v.layout, widths[pick], v.size, v.aliases_input),
                f"split piece {pick}",
            )
        return self.emit(
            lambda net, vals, a=i: pieces(vals[a])[0] + pieces(vals[a])[1],
            Value(v.layout, widths[0], v.size),
            "sum of pieces",
        )

    def se_gate(self, i: int) -> int:
        v = self.values[i]
        hidden = max(2, v.channels // 2)
        squeeze = self.module(nn.Linear(v.channels, hidden), "SE squeeze")
        excite = self.module(nn.Linear(hidden, v.channels), "SE excite")
        spatial = tuple(range(2, 2 + len(v.size)))
        indexed = self.chance(0.5)

        def gate(net: nn.Module, vals: list[Tensor], src: int = i) -> Tensor:
            x = vals[src]
            w = torch.sigmoid(getattr(net, excite)(F.relu(getattr(net, squeeze)(x.mean(spatial)))))
            if indexed:
                w = w[:, :, None, None] if len(spatial) == 2 else w[:, :, None]
            else:
                w = w.view(x.shape[0], -1, *([1] * len(spatial)))
            return x * w

        return self.emit(
            gate, Value(v.layout, v.channels, v.size), "SE gate" + (" [:, :, None]" if indexed else " view")
        )

    def inplace(self, i: int) -> int:
        """An in-place op; half the time the model keeps using the old name (not rebound)."""
        v = self.values[i]
        if v.aliases_input:
            return self.activation(i)
        others = self.same_shape(i)
        j = self.rng.choice(others) if others and self.chance(0.7) else None
        kind = self.rng.randrange(4)
        rebind = self.chance(0.5)

        def mutate(net: nn.Module, vals: list[Tensor], a: int = i, b: int | None = j) -> Tensor:
            x = vals[a]
            if b is not None and kind == 0:
                y = x.add_(vals[b])
            elif b is not None and kind == 1:
                y = x.mul_(vals[b])
            elif b is not None and kind == 2:
                x += vals[b]  # rebinds the local name only
                y = x
            else:
                y = x.relu_()
            return y if rebind else vals[a]

        return self.emit(
            mutate, Value(v.layout, v.channels, v.size), f"in-place op {kind} on v{i} with {j} (rebound: {rebind})"
        )

    def reuse(self, i: int) -> int | None:
        v = self.values[i]
        fits = [
            (n, a, b) for n, a, b in self.reusable if (a.layout, a.channels, a.size) == (v.layout, v.channels, v.size)
        ]
        if not fits:
            return None
        name, _, out = self.rng.choice(fits)
        return self.emit(_call(name, i), Value(out.layout, out.channels, out.size), f"{name}(v{i}) again")

    # -- layout changes ----------------------------------------------------------------
    def to_features(self, i: int) -> int:
        v = self.values[i]
        if v.layout == SEQUENCE:
            return self.emit(
                lambda net, vals, a=i: vals[a].mean(1), Value(FEATURES, v.channels, ()), "mean over tokens"
            )
        spatial = tuple(range(2, 2 + len(v.size)))
        choice = self.rng.randrange(3)
        if choice == 0:
            return self.emit(
                lambda net, vals, a=i: vals[a].mean(spatial), Value(FEATURES, v.channels, ()), "global mean"
            )
        self.spatial_free = False
        width = v.channels * _prod(v.size)
        if choice == 1:
            return self.apply(nn.Flatten(), i, Value(FEATURES, width, (), v.aliases_input), "Flatten", reusable=False)
        flat = Value(FEATURES, width, (), v.aliases_input)
        return self.emit(lambda net, vals, a=i: vals[a].view(vals[a].shape[0], -1), flat, "view(N, -1)")

    def image_to_signal(self, i: int) -> int:
        """``flatten(1, 2)``: channels times rows become the channels of a Conv1d."""
        v = self.values[i]
        self.spatial_free = False
        return self.emit(
            lambda net, vals, a=i: vals[a].flatten(1, 2),
            Value(SIGNAL, v.channels * v.size[0], v.size[1:], v.aliases_input),
            "flatten(1, 2)",
        )

    # -- one random step ------------------------------------------------------------------
    def step(self, i: int) -> int:
        v = self.values[i]
        if self.chance(0.08) and (j := self.reuse(i)) is not None:
            return j
        ops: list[Callable[[int], int]]
        if v.layout in (IMAGE, SIGNAL):
            ops = [self.conv, self.conv, self.depthwise, self.batchnorm, self.activation, self.residual, self.concat,
                   self.split, self.se_gate, self.inplace]  # fmt: skip
            if min(v.size) >= 2:
                ops.append(self.pool)
            if v.layout == IMAGE and v.channels * v.size[0] <= 64 and min(v.size) >= 3:
                ops.append(self.image_to_signal)
        elif v.layout == SEQUENCE:
            ops = [self.linear, self.linear, self.activation, self.residual, self.concat, self.split, self.inplace,
                   self.attention, self.hand_attention]  # fmt: skip
            if v.channels % 2 == 0:
                ops.append(self.attention)
        else:
            ops = [self.linear, self.linear, self.batchnorm, self.activation, self.residual, self.concat, self.split,
                   self.inplace]  # fmt: skip
            if v.channels >= 4:
                ops.append(self.pool)
        return self.rng.choice(ops)(i)


def _prod(xs: tuple[int, ...]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


@dataclass
class RandomModel:
    model: nn.Module
    example_inputs: tuple[Tensor, ...]
    fresh_inputs: list[tuple[Tensor, ...]]  # the example's shapes with another batch size
    other_sizes: list[tuple[Tensor, ...]]  # other spatial sizes / sequence lengths, where the model allows them
    description: list[str] = field(default_factory=list)


def random_model(seed: int) -> RandomModel:
    """A random model with randomly zeroed structures, its example inputs and fresh inputs."""
    g = _Generator(seed)
    layout = g.rng.choice([IMAGE, IMAGE, SIGNAL, SEQUENCE, FEATURES])
    channels = g.rng.choice([3, 4, 8]) if layout != SEQUENCE else g.rng.choice([4, 8])
    size = {
        IMAGE: (g.rng.randint(6, 10),) * 2,
        SIGNAL: (g.rng.randint(6, 12),),
        SEQUENCE: (g.rng.randint(3, 6),),
        FEATURES: (),
    }[layout]
    g.values.append(Value(layout, channels, size, aliases_input=True))
    current = 0
    for _ in range(g.rng.randint(2, 9)):
        current = g.step(current)
        if g.values[current].channels == 0:
            break
    if g.chance(0.5) and g.values[current].layout != FEATURES:
        current = g.to_features(current)
    if g.chance(0.7) and g.values[current].layout in (FEATURES, SEQUENCE):
        current = g.linear(current, out=g.rng.choice([3, 5]))
    if current != len(g.values) - 1:  # the model returns the last step's value
        g.emit(lambda net, vals, a=current: vals[a], g.values[current], "output")
    model = g.net.eval()
    _randomize(model, g)
    dtype = torch.float64 if g.chance(0.15) else torch.float32
    model.to(dtype)
    shape = (2, channels, *size) if layout != SEQUENCE else (2, *size, channels)
    example = (torch.randn(shape, generator=g.gen, dtype=dtype),)
    fresh = [(torch.randn((5, *shape[1:]), generator=g.gen, dtype=dtype),)]
    other: list[tuple[Tensor, ...]] = []
    if g.spatial_free and layout != FEATURES:
        bigger = (3, shape[1], *(s + 3 for s in shape[2:])) if layout != SEQUENCE else (3, shape[1] + 2, shape[2])
        other.append((torch.randn(bigger, generator=g.gen, dtype=dtype),))
    return RandomModel(model, example, fresh, other, g.net.description)


def _randomize(model: nn.Module, g: _Generator) -> None:
    """Non-trivial statistics and biases, then random zeroed structures."""

    def pick(n: int) -> Tensor:
        return torch.randperm(n, generator=g.gen)[: g.rng.randint(1, max(1, n - 1))]

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g.gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g.gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g.gen))
                m.bias.copy_(torch.randn(m.num_features, generator=g.gen))
                if g.chance(0.5):
                    m.weight[pick(m.num_features)] = 0
            elif isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear):
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g.gen) * 0.5)
                _zero_weights(m.weight, m.bias, g, pick)
            elif isinstance(m, nn.MultiheadAttention) and g.chance(0.6):
                _zero_head(m, g)
        for m in model.modules():  # after their Linears got random zeros of their own
            if isinstance(m, HandAttention) and g.chance(0.6):
                (group,) = Heads().build("attention", m)
                matrix = group.gather()
                matrix[g.rng.randrange(group.n_groups)] = 0  # a key/value head with its query heads
                group.scatter_(matrix)


def _zero_weights(w: Tensor, bias: Tensor | None, g: _Generator, pick: Callable[[int], Tensor]) -> None:
    kind = g.rng.randrange(6)
    if kind == 0:
        w[pick(w.shape[0])] = 0  # rows: filters / neurons
    elif kind == 1 and w.shape[1] > 1:
        w[:, pick(w.shape[1])] = 0  # columns: input channels
    elif kind == 2 and w.dim() > 2:
        cols = w.view(w.shape[0], -1)
        cols[:, pick(cols.shape[1])] = 0  # filter-shape columns
    elif kind == 3:
        w.zero_()  # a whole layer
        if bias is not None and g.chance(0.5):
            bias.zero_()
    elif kind == 4:
        rows = pick(w.shape[0])
        w[rows] = 0
        if bias is not None:
            bias[rows] = 0


def _zero_head(m: nn.MultiheadAttention, g: _Generator) -> None:
    h = g.rng.randrange(m.num_heads)
    d, e = m.head_dim, m.embed_dim
    if g.chance(0.5):
        m.in_proj_weight[2 * e + h * d : 2 * e + (h + 1) * d] = 0
        m.in_proj_bias[2 * e + h * d : 2 * e + (h + 1) * d] = 0
    else:
        m.out_proj.weight[:, h * d : (h + 1) * d] = 0


# -- classifying one run ---------------------------------------------------------------------
EXACT = "exact"
UNCHANGED = "nothing removable"
REFUSED = "refused"
SELF_CHECK = "self-check failure"
WRONG = "wrong"
WRONG_OTHER_SIZE = "wrong at another spatial size"
RAW = "raw exception"


@dataclass
class Outcome:
    seed: int
    kind: str
    detail: str = ""
    description: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "kind": self.kind, "detail": self.detail, "model": self.description}


def compact_options(capture: str = "fx") -> CompactOptions:
    """Deterministic form choice, and the capture ``capture`` ("fx", "export" or "auto")
    where this version of the library has a choice of captures."""
    try:
        from shrinkage.graph.capture import Capture
    except ImportError:  # one capture only: fx
        return CompactOptions(choose_by=ByMacs())
    by_name = {"fx": Capture.FX, "export": Capture.EXPORT, "auto": Capture.AUTO}
    return CompactOptions(choose_by=ByMacs(), capture=by_name[capture])  # type: ignore[call-arg]


def fuzz_one(seed: int, rtol: float = 1e-4, capture: str = "fx") -> Outcome:
    """Compact the random model of ``seed`` (graph captured by ``capture``) and say what happened."""
    case = random_model(seed)
    before = sum(p.numel() for p in case.model.parameters())
    try:
        small = shrinkage.compact(case.model, case.example_inputs, compact_options(capture))
    except ShrinkageError as exc:
        kind = SELF_CHECK if "please report" in str(exc) else REFUSED
        return Outcome(seed, kind, f"{type(exc).__name__}: {exc}", case.description)
    except Exception as exc:  # noqa: BLE001  (the point: any other exception is a bug)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''} ({where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
        return Outcome(seed, RAW, detail, case.description)
    for kind, inputs_list in ((WRONG, [case.example_inputs, *case.fresh_inputs]), (WRONG_OTHER_SIZE, case.other_sizes)):
        worst = _worst_difference(case, small, inputs_list)
        if not worst <= rtol:
            return Outcome(seed, kind, f"max relative difference {worst:.3g}", case.description)
    after = sum(p.numel() for p in small.parameters())
    return Outcome(seed, EXACT if after < before else UNCHANGED, f"{before} -> {after} parameters", case.description)


def _worst_difference(case: RandomModel, small: nn.Module, inputs_list: list[tuple[Tensor, ...]]) -> float:
    """Largest output difference relative to the output scale (at least 1)."""
    worst = 0.0
    for inputs in inputs_list:
        try:
            with torch.no_grad():
                reference = case.model(*inputs)
        except RuntimeError:
            continue  # sizes that only matched at the example's spatial size: the original fails too
        scale = max(float(reference.abs().max()) if reference.numel() else 0.0, 1.0)
        worst = max(worst, max_output_difference(case.model, small, inputs) / scale)
    return worst


_register_hand_attention()
