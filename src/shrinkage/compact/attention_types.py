"""Attention modules written by hand: where their heads live, registered once per type.

A hand-written attention (timm's ``Attention``, Hugging Face's ``BertSelfAttention``,
``GPT2Attention``, ``LlamaAttention``, ...) projects its input to queries, keys and
values with linear layers, reshapes them into heads, attends, merges the heads and
(usually) projects them back. Its code reshapes with literal head counts or head sizes,
so channels inside it can only go by whole heads, and only when the module's own
attributes are updated to the new count. An :class:`AttentionType` says, per module
class, which child layers project (``query``/``key``/``value``, or one ``fused_qkv``
whose rows are queries, keys and values in that order), which one projects the merged
heads back (``output``; ``None`` when the merged heads leave the module, as in BERT
where the next module projects them), how many heads it has and how to set the new
counts. The graph capture then treats the ops between the projections as one unit
(:mod:`shrinkage.graph.attention_heads`), and compaction removes whole heads: in
grouped-query attention, a key/value head together with the query heads that share it.

Registering a type asserts that the module computes per-head attention between those
projections (each output head reads only its own query, key and value head, the query
heads of a group sharing one key/value head); compaction still checks the outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from shrinkage.compact.module_attrs import number_attr, set_int_attr
from shrinkage.compact.optional_libraries import register_imported, when_imported


@dataclass(frozen=True)
class HeadCounts:
    """Query heads, key/value heads (fewer in grouped-query attention) and the head size."""

    query: int
    key_value: int
    head_dim: int

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.query // self.key_value


@dataclass(frozen=True)
class AttentionType:
    """How one family of attention modules is laid out (see the module docstring).

    ``counts``: the module's head counts; ``set_counts``: update the module's attributes
    after heads were removed (``query``, ``key_value`` heads kept; the head size never
    changes). Child names are relative to the module."""

    types: tuple[type[nn.Module], ...]
    counts: Callable[[nn.Module], HeadCounts]
    set_counts: Callable[[nn.Module, int, int], None]
    query: str | None = None
    key: str | None = None
    value: str | None = None
    fused_qkv: str | None = None
    output: str | None = None
    #: tensors of the module (paths relative to it) holding one entry per query head along
    #: the given dim, sliced with the heads: a relative position bias table per head
    per_head: tuple[tuple[str, int], ...] = ()
    #: tensors read between the projections whose sizes may equal a head count by chance
    #: but that hold nothing per head (a relative position index)
    not_per_head: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        separate = (self.query, self.key, self.value)
        if (self.fused_qkv is None) == (None in separate) or (self.fused_qkv is not None and any(separate)):
            raise ValueError("an AttentionType names either fused_qkv or all of query, key and value")

    def projections(self) -> dict[str, str]:
        """Role (``query``/``key``/``value``/``qkv``) -> child name."""
        if self.fused_qkv is not None:
            return {"qkv": self.fused_qkv}
        assert self.query is not None and self.key is not None and self.value is not None
        return {"query": self.query, "key": self.key, "value": self.value}


_REGISTRY: dict[type[nn.Module], AttentionType] = {}


def register_attention_type(attention_type: AttentionType) -> None:
    """Make every module of ``attention_type.types`` (and their subclasses) lose whole
    heads in compaction. A later registration for the same class replaces the earlier."""
    for cls in attention_type.types:
        _REGISTRY[cls] = attention_type


def attention_type_of(module: nn.Module) -> AttentionType | None:
    """The registered type of ``module``, looking through its classes in method order."""
    register_imported()
    for cls in type(module).__mro__:
        found = _REGISTRY.get(cls)
        if found is not None:
            return found
    return None


def sync_head_counts(model: nn.Module) -> None:
    """Set the head counts of every registered attention module of ``model`` from its
    projections' sizes (after a layout was loaded into a freshly built model)."""
    for module in model.modules():
        at = attention_type_of(module)
        if at is None:
            continue
        counts = at.counts(module)
        sizes = {role: _out_features(module.get_submodule(child)) for role, child in at.projections().items()}
        if "qkv" in sizes:
            kv = sizes["qkv"] // counts.head_dim // (counts.group + 2)
            query = kv * counts.group
        else:
            query, kv = sizes["query"] // counts.head_dim, sizes["value"] // counts.head_dim
        if (query, kv) != (counts.query, counts.key_value):
            at.set_counts(module, query, kv)


def _out_features(layer: nn.Module) -> int:
    from shrinkage.compact.layer_types import canonical_param

    return int(canonical_param(layer, "weight").shape[0])


# -- timm --------------------------------------------------------------------------------


def _timm_counts(m: nn.Module) -> HeadCounts:
    return HeadCounts(number_attr(m, "num_heads"), number_attr(m, "num_heads"), number_attr(m, "head_dim"))


def _timm_window_counts(m: nn.Module) -> HeadCounts:
    """timm's ``WindowAttention`` (Swin) stores no head size, only ``scale = head_size ** -0.5``;
    the projections' widths would not do: after a load they are resized before the count is."""
    heads, scale = number_attr(m, "num_heads"), m.__dict__["scale"]  # a plain float attribute
    return HeadCounts(heads, heads, round(float(scale) ** -2))


def _timm_set(m: nn.Module, query: int, key_value: int) -> None:
    set_int_attr(m, "num_heads", query)
    if hasattr(m, "attn_dim"):  # the width it merges the heads back into
        set_int_attr(m, "attn_dim", query * number_attr(m, "head_dim"))


# -- Hugging Face transformers -----------------------------------------------------------


def _bert_counts(m: nn.Module) -> HeadCounts:
    heads = number_attr(m, "num_attention_heads")
    return HeadCounts(heads, heads, number_attr(m, "attention_head_size"))


def _bert_set(m: nn.Module, query: int, key_value: int) -> None:
    # the forward infers the head count (``view(..., -1, head_size)``); the attributes
    # are kept true for code that reads them
    set_int_attr(m, "num_attention_heads", query)
    set_int_attr(m, "all_head_size", query * number_attr(m, "attention_head_size"))


def _distilbert_counts(m: nn.Module) -> HeadCounts:
    heads = number_attr(m, "n_heads")
    return HeadCounts(heads, heads, number_attr(m, "attention_head_size"))


def _distilbert_set(m: nn.Module, query: int, key_value: int) -> None:
    set_int_attr(m, "n_heads", query)  # the forward infers it (``view(..., -1, head_size)``); kept true


def _gpt2_counts(m: nn.Module) -> HeadCounts:
    return HeadCounts(number_attr(m, "num_heads"), number_attr(m, "num_heads"), number_attr(m, "head_dim"))


def _gpt2_set(m: nn.Module, query: int, key_value: int) -> None:
    set_int_attr(m, "num_heads", query)
    # the fused projection is split into pieces of this size
    set_int_attr(m, "split_size", query * number_attr(m, "head_dim"))


def _projection_counts(m: nn.Module) -> HeadCounts:
    """LLaMA-style modules (``q_proj``...``o_proj``, ``head_dim``): counts from the projections."""
    d = number_attr(m, "head_dim")
    return HeadCounts(number_attr(m.get_submodule("q_proj"), "out_features") // d,
                      number_attr(m.get_submodule("k_proj"), "out_features") // d, d)  # fmt: skip


def _projection_set(m: nn.Module, query: int, key_value: int) -> None:
    # the forward infers the head counts (``view(..., -1, head_dim)``) and the query heads
    # per key/value head do not change; attributes that state the counts are kept true
    for attr, value in (("num_attention_heads", query), ("num_heads", query), ("num_key_value_heads", key_value)):
        if isinstance(getattr(m, attr, None), int):
            setattr(m, attr, value)


def _register_timm() -> None:
    try:
        from timm.layers import Attention
    except ImportError:
        return
    register_attention_type(AttentionType((Attention,), _timm_counts, _timm_set, fused_qkv="qkv", output="proj"))
    try:
        from timm.models.swin_transformer import WindowAttention
    except ImportError:
        return
    register_attention_type(AttentionType(
        (WindowAttention,), _timm_window_counts, _timm_set, fused_qkv="qkv", output="proj",
        per_head=(("relative_position_bias_table", 1),), not_per_head=("relative_position_index",),
    ))  # fmt: skip


def _register_transformers() -> None:
    import importlib

    def classes(module: str, *names: str) -> tuple[type[nn.Module], ...]:
        try:
            found = importlib.import_module(f"transformers.models.{module}")
        except ImportError:
            return ()
        return tuple(getattr(found, n) for n in names if hasattr(found, n))

    bert_like = classes("bert.modeling_bert", "BertSelfAttention") + classes(
        "roberta.modeling_roberta", "RobertaSelfAttention"
    )
    if bert_like:
        register_attention_type(AttentionType(bert_like, _bert_counts, _bert_set, "query", "key", "value"))
    distilbert = classes("distilbert.modeling_distilbert", "DistilBertSelfAttention")
    if distilbert:
        register_attention_type(AttentionType(
            distilbert, _distilbert_counts, _distilbert_set, "q_lin", "k_lin", "v_lin", output="out_lin"
        ))  # fmt: skip
    gpt2 = classes("gpt2.modeling_gpt2", "GPT2Attention")
    if gpt2:
        register_attention_type(AttentionType(gpt2, _gpt2_counts, _gpt2_set, fused_qkv="c_attn", output="c_proj"))
    llama_like = (
        classes("llama.modeling_llama", "LlamaAttention")
        + classes("mistral.modeling_mistral", "MistralAttention")
        + classes("qwen2.modeling_qwen2", "Qwen2Attention")
        + classes("vit.modeling_vit", "ViTAttention")
    )
    if llama_like:
        register_attention_type(AttentionType(
            llama_like, _projection_counts, _projection_set, "q_proj", "k_proj", "v_proj", output="o_proj"
        ))  # fmt: skip
    swin = classes("swin.modeling_swin", "SwinAttention")
    if swin:
        register_attention_type(AttentionType(
            swin, _projection_counts, _projection_set, "q_proj", "k_proj", "v_proj", output="o_proj",
            per_head=(("relative_position_bias.relative_position_bias_table", 1),),
            not_per_head=("relative_position_bias.relative_position_index",),
        ))  # fmt: skip


when_imported("timm", _register_timm)
when_imported("transformers", _register_transformers)
