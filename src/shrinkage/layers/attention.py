"""Attention heads: where each head's weights live, and attention with heads removed.

Head ``h`` of a multi-head attention owns rows ``h*d .. (h+1)*d`` of the query, key and
value projections (and of their biases) and the same columns of the output projection.
Its contribution to the output is ``out_proj[:, head h] @ (softmax(q_h k_h^T) v_h)``, so
the head can be removed exactly when its value rows (with their bias) are zero, since
every attention row then averages zero vectors, or when its output columns are zero.
Its query and key rows alone do not decide it: zero scores still average the values.

``nn.MultiheadAttention`` cannot hold fewer heads than ``embed_dim / head_dim`` (it ties
the inner width to the model width), so compaction replaces it by
:class:`HeadPrunedAttention`, which keeps the original call signature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shrinkage.errors import UnsupportedModuleError
from shrinkage.layers.compacted import uninitialized
from shrinkage.nonzero import used_along

if TYPE_CHECKING:
    from shrinkage.compact.attention_types import AttentionType


@dataclass(frozen=True)
class HeadSlice:
    """Dimension ``dim`` of ``param``: head ``h`` owns indices ``index[h]`` (shape ``(heads, k)``)."""

    param: nn.Parameter
    dim: int
    index: Tensor


@dataclass(frozen=True)
class HeadLayout:
    """Per-head slices of one attention module, by role."""

    heads: int
    head_dim: int
    value: tuple[HeadSlice, ...]  # value rows (+ bias): zero means the head outputs zero
    output: tuple[HeadSlice, ...]  # output-projection columns: zero means nobody reads it
    query_key: tuple[HeadSlice, ...]  # query and key rows (+ biases)

    @property
    def slices(self) -> tuple[HeadSlice, ...]:
        return self.query_key + self.value + self.output


def _rows(heads: int, head_dim: int, offset: int = 0) -> Tensor:
    return offset + torch.arange(heads * head_dim).reshape(heads, head_dim)


def head_layout(name: str, module: nn.Module) -> HeadLayout:
    """Where the heads of ``module`` (an attention layer) live; a clear error otherwise."""
    if isinstance(module, HeadPrunedAttention):
        h, d = module.num_heads, module.head_dim
        rows = _rows(h, d)

        def proj(layer: nn.Module) -> tuple[HeadSlice, ...]:
            if not isinstance(layer, nn.Linear):
                raise UnsupportedModuleError(f"module '{name}': head groups need plain Linear projections")
            out = (HeadSlice(layer.weight, 0, rows),)
            return out + ((HeadSlice(layer.bias, 0, rows),) if layer.bias is not None else ())

        if not isinstance(module.out_proj, nn.Linear):
            raise UnsupportedModuleError(f"module '{name}': head groups need a plain Linear output projection")
        return HeadLayout(h, d, proj(module.v_proj), (HeadSlice(module.out_proj.weight, 1, rows),),
                          proj(module.q_proj) + proj(module.k_proj))  # fmt: skip
    if isinstance(module, nn.MultiheadAttention):
        if module.bias_k is not None or module.add_zero_attn:
            raise UnsupportedModuleError(f"module '{name}': heads of attention with add_bias_kv/add_zero_attn are not supported")
        h, d, e = module.num_heads, module.head_dim, module.embed_dim
        out = (HeadSlice(module.out_proj.weight, 1, _rows(h, d)),)
        bias = module.in_proj_bias
        if module._qkv_same_embed_dim:
            w = module.in_proj_weight
            qk = tuple(HeadSlice(p, 0, _rows(h, d, o)) for o in (0, e) for p in (w, bias) if p is not None)
            v = tuple(HeadSlice(p, 0, _rows(h, d, 2 * e)) for p in (w, bias) if p is not None)
        else:
            qk = (HeadSlice(module.q_proj_weight, 0, _rows(h, d)), HeadSlice(module.k_proj_weight, 0, _rows(h, d)))
            v = (HeadSlice(module.v_proj_weight, 0, _rows(h, d)),)
            if bias is not None:
                qk += (HeadSlice(bias, 0, _rows(h, d)), HeadSlice(bias, 0, _rows(h, d, e)))
                v += (HeadSlice(bias, 0, _rows(h, d, 2 * e)),)
        return HeadLayout(h, d, v, out, qk)
    from shrinkage.compact.attention_types import attention_type_of

    attention_type = attention_type_of(module)
    if attention_type is not None:
        return _registered_layout(module, attention_type)
    raise UnsupportedModuleError(
        f"module '{name}' ({type(module).__name__}) has no head groups; they exist for "
        "nn.MultiheadAttention, HeadPrunedAttention and registered attention types "
        "(see shrinkage.register_attention_type)"
    )


def _registered_layout(module: nn.Module, attention_type: AttentionType) -> HeadLayout:
    """Head layout of a registered hand-written attention. One group per key/value head:
    in grouped-query attention it holds the rows of every query head that reads it, since
    compaction removes them together. Without an output projection inside the module (BERT)
    the groups hold the projections' rows only."""
    from shrinkage.compact.layer_types import stored_dim

    c = attention_type.counts(module)
    kv, d, q_width = c.key_value, c.head_dim, c.group * c.head_dim

    def rows(role: str, width: int, offset: int = 0) -> tuple[HeadSlice, ...]:
        layer = module.get_submodule(attention_type.projections()[role])
        index = offset + torch.arange(kv * width).reshape(kv, width)
        out = (HeadSlice(layer.weight, stored_dim(layer, "weight", 0), index),)
        bias = getattr(layer, "bias", None)
        return out + ((HeadSlice(bias, 0, index),) if isinstance(bias, nn.Parameter) else ())

    if attention_type.fused_qkv is not None:
        query_key = rows("qkv", q_width) + rows("qkv", d, kv * q_width)
        value = rows("qkv", d, kv * q_width + kv * d)
    else:
        query_key, value = rows("query", q_width) + rows("key", d), rows("value", d)
    output: tuple[HeadSlice, ...] = ()
    if attention_type.output is not None:
        out = module.get_submodule(attention_type.output)
        index = torch.arange(kv * q_width).reshape(kv, q_width)
        output = (HeadSlice(out.weight, stored_dim(out, "weight", 1), index),)
    return HeadLayout(kv, d, value, output, query_key)


def _zero_heads(slices: tuple[HeadSlice, ...], heads: int) -> Tensor:
    zero = torch.ones(heads, dtype=torch.bool)
    if heads == 0:
        return zero
    for s in slices:
        block = s.param.detach().index_select(s.dim, s.index.reshape(-1)).movedim(s.dim, 0)
        zero &= ~used_along(block.reshape(heads, -1), 0)
    return zero


def removable_heads(name: str, module: nn.Module) -> Tensor:
    """Bool ``(heads,)``: heads whose removal leaves the module's output unchanged."""
    layout = head_layout(name, module)
    unread = _zero_heads(layout.output, layout.heads) if layout.output else torch.zeros(layout.heads, dtype=torch.bool)
    return _zero_heads(layout.value, layout.heads) | unread


class HeadPrunedAttention(nn.Module):
    """Multi-head attention with an inner width of ``num_heads * head_dim`` (any number of
    heads, zero included), called exactly like ``nn.MultiheadAttention``.

    ``original_heads`` and the ``kept`` buffer say which heads of the original module
    remain, so a per-head 3-D ``attn_mask`` written for the original is sliced to match.
    Returned attention weights (``need_weights=True``) cover the kept heads only.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        original_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        bias: bool = True,
        out_bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
    ) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.original_heads, self.dropout, self.batch_first = original_heads, dropout, batch_first
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.q_proj = uninitialized(nn.Linear, embed_dim, inner, bias=bias)
        self.k_proj = uninitialized(nn.Linear, self.kdim, inner, bias=bias)
        self.v_proj = uninitialized(nn.Linear, self.vdim, inner, bias=bias)
        self.out_proj = uninitialized(nn.Linear, inner, embed_dim, bias=out_bias)
        self.register_buffer("kept", torch.arange(num_heads))

    @classmethod
    def from_module(cls, name: str, module: nn.Module, keep: Tensor) -> HeadPrunedAttention:
        """The heads ``keep`` (bool mask) of ``module``, weights copied."""
        layout = head_layout(name, module)
        kept = keep.nonzero().flatten()
        if isinstance(module, HeadPrunedAttention):
            src = [module.q_proj, module.k_proj, module.v_proj]
            weights = [p.weight.detach() for p in src]
            biases = [p.bias.detach() if p.bias is not None else None for p in src]
            original, previous = module.original_heads, module.kept
            kdim, vdim, dropout, batch_first = module.kdim, module.vdim, module.dropout, module.batch_first
        else:
            e = module.embed_dim
            if module._qkv_same_embed_dim:
                weights = list(module.in_proj_weight.detach().split(e))
            else:
                weights = [module.q_proj_weight.detach(), module.k_proj_weight.detach(), module.v_proj_weight.detach()]
            b = module.in_proj_bias
            biases = list(b.detach().split(e)) if b is not None else [None] * 3
            original, previous = module.num_heads, torch.arange(module.num_heads)
            kdim, vdim, dropout, batch_first = module.kdim, module.vdim, module.dropout, module.batch_first
        out = module.out_proj
        new = cls(
            out.out_features, len(kept), layout.head_dim, original, kdim=kdim, vdim=vdim,
            bias=biases[0] is not None, out_bias=out.bias is not None, dropout=dropout, batch_first=batch_first,
        ).to(device=out.weight.device, dtype=out.weight.dtype)  # fmt: skip
        rows = _rows(layout.heads, layout.head_dim)[kept].reshape(-1)
        with torch.no_grad():
            for proj, w, bias in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases, strict=True):
                proj.weight.copy_(w[rows])
                if bias is not None:
                    proj.bias.copy_(bias[rows])
            new.out_proj.weight.copy_(out.weight.detach()[:, rows])
            if out.bias is not None:
                new.out_proj.bias.copy_(out.bias.detach())
            new.kept = previous[kept].clone()
        return new.train(module.training)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, source = query.shape[0], query.shape[1], key.shape[1]
        h, d = self.num_heads, self.head_dim
        if h == 0:  # every head removed: the output projection's bias is all that is left
            out = self.out_proj(query.new_zeros(n, length, 0))
            return self._restore_layout(out, unbatched), (query.new_zeros(n, length, source) if need_weights else None)
        q = self.q_proj(query).view(n, length, h, d).transpose(1, 2)
        k = self.k_proj(key).view(n, source, h, d).transpose(1, 2)
        v = self.v_proj(value).view(n, source, h, d).transpose(1, 2)
        mask = self._additive_mask(attn_mask, key_padding_mask, n, length, source, q.dtype)
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d)
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            out = F.dropout(weights, self.dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        out = self._restore_layout(self.out_proj(out.transpose(1, 2).reshape(n, length, h * d)), unbatched)
        if weights is not None:
            weights = weights.mean(dim=1) if average_attn_weights else weights
            weights = weights.squeeze(0) if unbatched else weights
        return out, weights

    def _restore_layout(self, out: Tensor, unbatched: bool) -> Tensor:
        """Back from ``(N, L, E)`` to the caller's layout (sequence-first, or unbatched)."""
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        return out.squeeze(1) if unbatched else out

    def _additive_mask(
        self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, n: int, length: int, source: int, dtype: torch.dtype
    ) -> Tensor | None:
        """Both masks as one float mask broadcastable to ``(n, heads, length, source)``;
        boolean entries that are True mean "may not attend", as in ``nn.MultiheadAttention``."""
        mask = None
        if attn_mask is not None:
            mask = _as_additive(attn_mask, dtype)
            if mask.dim() == 3:  # (n * original heads, L, S): keep the rows of the kept heads
                mask = mask.view(n, self.original_heads, length, source).index_select(1, self.kept)
        if key_padding_mask is not None:
            pad = _as_additive(key_padding_mask, dtype).view(n, 1, 1, source)
            mask = pad if mask is None else mask + pad
        return mask

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, heads={self.num_heads}/{self.original_heads}, head_dim={self.head_dim}"


def _as_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)
