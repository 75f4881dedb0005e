"""Hugging Face transformers: a compacted model whose config round-trips through
``save_pretrained`` / ``from_pretrained``.

Compaction removes MLP neurons (and attention heads) per layer, but transformers rebuilds
a model from its config alone. :func:`sync_config` makes the config say what the layers
now are:

* when every layer kept the same number of neurons, the config's width key says so
  (``intermediate_size``, GPT-2's ``n_inner``), and likewise the number of heads
  (``num_attention_heads`` / ``num_key_value_heads``) where the architecture reads its
  head size from the config (``head_dim``): plain ``from_pretrained`` then rebuilds it;
* otherwise (widths that differ per layer; fewer heads in an architecture that derives
  its head size from the number of heads, as BERT and GPT-2 do) the config keeps the
  sizes of the base model and records under ``shrinkage_layout`` the layers that differ
  from it, as the JSON layout of :mod:`shrinkage.compact.layout`. :func:`from_pretrained`
  builds the base model, applies that layout as :func:`shrinkage.load` does and loads the
  saved tensors strictly.

Either way ``sync_config`` first checks, on the meta device, that what the config (and
layout) builds has exactly the compacted model's modules and tensor shapes.

transformers is imported only when these functions run: it is an optional extra.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from shrinkage.compact.layer_types import canonical_param
from shrinkage.compact.layout import LayoutEntry, describe, parse_layout
from shrinkage.compact.layout_plan import plan_rebuild
from shrinkage.compact.layout_schema import AnyObject, Int, LayoutError, MapOf, Nullable, Record, SchemaMismatch, Text
from shrinkage.compact.serialize import rebuild_and_load
from shrinkage.errors import ConfigError, DataError, ShrinkageError, UnsupportedModuleError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

#: the config attribute (a key of config.json) holding the layout of a non-uniform model
LAYOUT_KEY = "shrinkage_layout"
FORMAT = "shrinkage.hf/1"
_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"
_WEIGHTS_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class Architecture:
    """Where one transformers architecture keeps the sizes compaction changes.

    ``mlp_in``: the child of each ``mlp`` block whose outputs are its neurons. ``qkv``: the
    children of each ``attention`` block projecting the queries, keys and values, or the
    one projection making all three (GPT-2's ``c_attn``). ``head_dim_key``: the config key
    fixing the head size; without one the architecture divides its width by the number
    of heads, so fewer heads can only be recorded in the layout."""

    name: str
    mlp: type[nn.Module]
    mlp_in: str
    attention: type[nn.Module]
    qkv: tuple[str, ...]
    width_key: str
    heads_key: str
    kv_heads_key: str | None = None
    head_dim_key: str | None = None

    def size_keys(self) -> tuple[str, ...]:
        keys = (self.width_key, self.heads_key, self.kv_heads_key, self.head_dim_key)
        return tuple(k for k in keys if k is not None)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UnsupportedModuleError(
            "shrinkage.integrations.huggingface needs transformers: pip install 'shrinkage[zoo]'"
        ) from None
    return transformers


@cache
def _architectures() -> dict[type, Architecture]:
    """The known architectures, by config class (subclasses are covered too)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config, RobertaConfig, ViTConfig
    from transformers.models.bert.modeling_bert import BertIntermediate, BertSelfAttention
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP, GPT2Attention
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP
    from transformers.models.mistral.modeling_mistral import MistralAttention, MistralMLP
    from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2MLP
    from transformers.models.roberta.modeling_roberta import RobertaIntermediate, RobertaSelfAttention
    from transformers.models.vit.modeling_vit import ViTAttention, ViTMLP

    def bert_like(name: str, intermediate: type[nn.Module], attention: type[nn.Module]) -> Architecture:
        return Architecture(name, intermediate, "dense", attention, ("query", "key", "value"), "intermediate_size",
                            "num_attention_heads")  # fmt: skip

    def llama_like(name: str, mlp: type[nn.Module], attention: type[nn.Module]) -> Architecture:
        return Architecture(name, mlp, "up_proj", attention, ("q_proj", "k_proj", "v_proj"), "intermediate_size",
                            "num_attention_heads", "num_key_value_heads", "head_dim")  # fmt: skip

    return {
        BertConfig: bert_like("bert", BertIntermediate, BertSelfAttention),
        RobertaConfig: bert_like("roberta", RobertaIntermediate, RobertaSelfAttention),
        GPT2Config: Architecture("gpt2", GPT2MLP, "c_fc", GPT2Attention, ("c_attn",), "n_inner", "n_head"),
        LlamaConfig: llama_like("llama", LlamaMLP, LlamaAttention),
        MistralConfig: llama_like("mistral", MistralMLP, MistralAttention),
        Qwen2Config: llama_like("qwen2", Qwen2MLP, Qwen2Attention),
        ViTConfig: Architecture("vit", ViTMLP, "fc1", ViTAttention, ("q_proj", "k_proj", "v_proj"),
                                "intermediate_size", "num_attention_heads", head_dim_key="head_dim"),
    }  # fmt: skip


def architecture_of(config: PretrainedConfig, who: str) -> Architecture:
    """The size table of ``config``'s architecture; ``who`` names the caller in the error."""
    table = _architectures()
    for cls in type(config).__mro__:
        if cls in table:
            return table[cls]
    known = ", ".join(a.name for a in table.values())
    raise UnsupportedModuleError(
        f"{who}: no size table for the Hugging Face architecture {type(config).__name__} "
        f"(model_type {getattr(config, 'model_type', None)!r}); known: {known}"
    )


# -- reading the layers' sizes ---------------------------------------------------------------


def _outputs(block: nn.Module, child: str) -> int | None:
    """Output features of the linear layer ``block.<child>``; None when it is not one."""
    layer = block._modules.get(child)
    weight = getattr(layer, "weight", None)
    if layer is None or not isinstance(weight, Tensor) or weight.dim() != 2:
        return None
    return int(canonical_param(layer, "weight").shape[0])


def _heads(block: nn.Module, arch: Architecture, head_dim: int) -> tuple[int, int] | None:
    """(query heads, key/value heads) of one attention; None when its projections are not
    whole heads of ``head_dim``."""
    sizes = [_outputs(block, child) for child in arch.qkv]
    if any(s is None for s in sizes):
        return None
    widths = [int(s) for s in sizes if s is not None]
    if len(widths) == 1:  # one projection for all three
        widths = [widths[0] // 3] * 3 if widths[0] % 3 == 0 else []
    if len(widths) != 3 or widths[1] != widths[2] or widths[0] % head_dim or widths[1] % head_dim:
        return None
    return widths[0] // head_dim, widths[1] // head_dim


def _same(values: list[Any]) -> Any:
    """The one value every layer has, or None."""
    return values[0] if values and values[0] is not None and all(v == values[0] for v in values) else None


def _uniform_sizes(model: nn.Module, arch: Architecture, config: PretrainedConfig) -> dict[str, Any]:
    """The config keys a uniform model's layers imply (those the layers agree on)."""
    head_dim = getattr(config, arch.head_dim_key, None) if arch.head_dim_key else None
    if head_dim is None:  # the base model's: compaction removes whole heads, never a head's width
        head_dim = config.hidden_size // getattr(config, arch.heads_key)
    blocks = list(model.modules())
    sizes: dict[str, Any] = {}
    width = _same([_outputs(m, arch.mlp_in) for m in blocks if isinstance(m, arch.mlp)])
    if width is not None:
        sizes[arch.width_key] = width
    heads = _same([_heads(m, arch, head_dim) for m in blocks if isinstance(m, arch.attention)])
    if heads is None or arch.head_dim_key is None:
        return sizes
    query, kv = heads
    grouped = arch.kv_heads_key is not None and kv >= 1 and query % kv == 0
    if query >= 1 and (grouped or query == kv):
        sizes[arch.heads_key] = query
        if arch.kv_heads_key is not None:
            sizes[arch.kv_heads_key] = kv
        sizes[arch.head_dim_key] = head_dim
    return sizes


# -- comparing a model with what a config builds -------------------------------------------


def _with_sizes(config: PretrainedConfig, sizes: Mapping[str, Any]) -> PretrainedConfig:
    """A copy of ``config`` with ``sizes`` set and no layout."""
    out = copy.deepcopy(config)
    _set_sizes(out, sizes)
    return out


def _set_sizes(config: PretrainedConfig, sizes: Mapping[str, Any]) -> None:
    for key, value in sizes.items():
        setattr(config, key, value)
    if hasattr(config, LAYOUT_KEY):
        delattr(config, LAYOUT_KEY)


def _on_meta(model_class: type[nn.Module], config: PretrainedConfig) -> nn.Module:
    """``model_class(config)`` with no memory behind its tensors (only shapes are compared)."""
    with torch.device("meta"):
        return model_class(copy.deepcopy(config))


def _own_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    tensors = chain(module._parameters.items(), module._buffers.items())
    return {name: tuple(t.shape) for name, t in tensors if t is not None}


def first_difference(model: nn.Module, rebuilt: nn.Module, replaced: Iterable[str] = ()) -> str | None:
    """The first module where ``model`` and ``rebuilt`` differ in type or in the shapes
    of their own tensors, as a phrase; None when they agree. Modules at or under a name
    in ``replaced`` are skipped (a layout rebuilds them)."""
    skipped = set(replaced)
    prefixes = tuple(f"{name}." for name in skipped)
    ours = {n: m for n, m in model.named_modules() if n not in skipped and not n.startswith(prefixes)}
    theirs = {n: m for n, m in rebuilt.named_modules() if n not in skipped and not n.startswith(prefixes)}
    for name in chain(ours, (n for n in theirs if n not in ours)):
        mine, other = ours.get(name), theirs.get(name)
        if mine is None or other is None:
            return f"module '{name}' is {'missing from' if mine is None else 'not built by'} the config's model"
        if type(mine) is not type(other):
            return f"module '{name}' is a {type(mine).__name__}, the config builds a {type(other).__name__}"
        shapes, built = _own_shapes(mine), _own_shapes(other)
        for key in chain(shapes, built):
            if shapes.get(key) != built.get(key):
                return f"tensor '{name}.{key}' has shape {shapes.get(key)}, the config builds {built.get(key)}"
    return None


# -- sync_config -----------------------------------------------------------------------------


def _record_schema(arch: Architecture) -> Record:
    keys = arch.size_keys()
    base = Record({key: Nullable(Int(0)) for key in keys}, frozenset(keys))
    return Record({"format": Text((FORMAT,)), "base": base, "modules": AnyObject()})


@dataclass(frozen=True)
class LayoutRecord:
    """The checked ``shrinkage_layout`` of a config: the base sizes and the layout."""

    base: dict[str, Any]
    layout: dict[str, LayoutEntry]


def read_record(config: PretrainedConfig, arch: Architecture, source: str) -> LayoutRecord | None:
    """The config's layout record, checked; None when it has none. ``source`` names the
    config (file) in errors."""
    raw = getattr(config, LAYOUT_KEY, None)
    if raw is None:
        return None
    try:
        _record_schema(arch).check(raw, LAYOUT_KEY)
        layout = parse_layout(json.dumps(raw["modules"]), f"{LAYOUT_KEY}.modules")
    except SchemaMismatch as exc:
        raise LayoutError(f"{source}: {exc}") from None
    return LayoutRecord(dict(raw["base"]), layout)


def sync_config(model: PreTrainedModel) -> None:
    """Make ``model.config`` describe ``model``'s layers (in place), so that
    ``save_pretrained`` writes a config its weights fit.

    Uniform layers update the config's size keys (plain ``from_pretrained`` reloads the
    model); otherwise the config keeps the base model's sizes and gains a
    ``shrinkage_layout`` entry (reload with this module's :func:`from_pretrained`). Raises
    :class:`~shrinkage.errors.UnsupportedModuleError` for an architecture without a size
    table, or a model neither way can rebuild (a changed layer without a layout codec)."""
    transformers = _transformers()
    if not isinstance(model, transformers.PreTrainedModel):
        raise UnsupportedModuleError(f"sync_config: expected a transformers model, got {type(model).__name__}")
    config = model.config
    arch = architecture_of(config, "sync_config")
    record = read_record(config, arch, "sync_config")
    # the sizes every layer fits in: those of an earlier record, else the config's own
    own = {key: getattr(config, key) for key in arch.size_keys() if hasattr(config, key)}
    base = record.base if record is not None else own
    base_config = _with_sizes(config, base)
    implied = _uniform_sizes(model, arch, base_config)
    uniform = {k: v for k, v in implied.items() if getattr(base_config, k, None) != v}
    if first_difference(model, _on_meta(type(model), _with_sizes(base_config, uniform))) is None:
        _set_sizes(config, {**base, **uniform})
        return
    base_model = _on_meta(type(model), base_config)
    described = describe(model)
    layout = parse_layout(json.dumps(described), LAYOUT_KEY)
    plan = plan_rebuild(base_model, layout, "sync_config")
    problem = first_difference(model, base_model, plan.tops)
    if problem is not None:
        raise UnsupportedModuleError(f"sync_config: {problem}, and no layout codec records the change "
                                     f"(save {type(model).__name__} with shrinkage.save instead)")  # fmt: skip
    _set_sizes(config, base)
    setattr(config, LAYOUT_KEY, {"format": FORMAT, "base": base, "modules": {n: described[n] for n in plan.built}})


def sync_config_if_possible(model: nn.Module) -> str | None:
    """:func:`sync_config` for whatever model compaction returns, never raising: a
    transformers model of a known architecture gets its config synced (None is returned);
    any other model is left as it is and the reason comes back as one line. transformers
    is not imported here: a model of it can only exist once the caller imported it."""
    transformers = sys.modules.get("transformers")
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        return f"{type(model).__name__} is not a transformers model"
    try:
        sync_config(model)
    except ShrinkageError as exc:
        return str(exc)
    return None


# -- from_pretrained -------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"{path} is not a readable JSON file: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _weight_files(directory: Path) -> tuple[Path, list[Path]]:
    """The file to name in errors and the safetensors files holding the weights."""
    single, index = directory / _WEIGHTS_FILE, directory / _WEIGHTS_INDEX
    if single.is_file():
        return single, [single]
    if not index.is_file():
        raise DataError(f"{directory}: no {_WEIGHTS_FILE} or {_WEIGHTS_INDEX} (only safetensors weights are read)")
    raw = _read_json(index)
    try:
        Record({"weight_map": MapOf(Text(), Text())}, frozenset()).check(
            {"weight_map": raw.get("weight_map") if isinstance(raw, dict) else raw}, "index"
        )
    except SchemaMismatch as exc:
        raise LayoutError(f"{index}: {exc}") from None
    files = []
    for name in sorted(set(raw["weight_map"].values())):
        if Path(name).name != name or not (directory / name).is_file():
            raise DataError(f"{index}: weight file '{name}' not found in {directory}")
        files.append(directory / name)
    return index, files


def _stored_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (a handle, not a dict)
                    if name in shapes:
                        raise LayoutError(f"{path}: tensor '{name}' is stored in two weight files")
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"{path} is not a readable safetensors file: {_first_line(exc)}") from None
    return shapes


def _read_tensors(files: list[Path]) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for path in files:
        try:
            state.update(load_file(str(path)))
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: cannot read its tensors: {_first_line(exc)}") from None
    return state


def _tied_aliases(expected: Mapping[str, Tensor], stored: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
    """Names ``save_pretrained`` leaves out because they share their parameter with a
    stored name (a language model's output layer tied to its input embedding)."""
    by_tensor: dict[int, list[str]] = {}
    for name, tensor in expected.items():
        by_tensor.setdefault(id(tensor), []).append(name)
    aliases: dict[str, str] = {}
    for names in by_tensor.values():
        present = [n for n in names if n in stored]
        aliases.update({n: present[0] for n in names if present and n not in stored})
    return aliases


def _load_weights(base: nn.Module, layout: dict[str, LayoutEntry], directory: Path, config_file: str) -> None:
    """Apply ``layout`` to ``base`` and load the saved tensors; nothing in ``base`` changes
    unless every tensor fits."""
    source, files = _weight_files(directory)
    shapes = _stored_shapes(files)
    rebuild_and_load(base, layout, shapes, lambda expected: _tied_aliases(expected, shapes),
                     lambda: _read_tensors(files), config_file, str(source))  # fmt: skip


def _dtype_option(kwargs: dict[str, Any]) -> torch.dtype | None:
    """The one ``from_pretrained`` option the layout path honours: ``dtype``."""
    for key in kwargs:
        if key != "dtype":
            raise ConfigError(f"from_pretrained: option '{key}' is not supported for a model saved with a "
                              f"{LAYOUT_KEY} (only dtype is)")  # fmt: skip
    dtype = kwargs.get("dtype")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ConfigError(f"from_pretrained: option 'dtype' must be a torch.dtype, got {dtype!r}")
    return dtype


def from_pretrained(model_class: type[PreTrainedModel], path: str | Path, **kwargs: Any) -> PreTrainedModel:
    """Load a model written by ``save_pretrained`` after :func:`sync_config` from the local
    directory ``path``.

    A config with a ``shrinkage_layout`` builds ``model_class`` at the recorded base sizes,
    rebuilds the recorded layers as :func:`shrinkage.load` does and loads the safetensors
    weights strictly (every tensor present, in place and of its shape; tied weights may be
    stored once); the model comes back in eval mode, with the saved generation config. Any
    other config is left to ``model_class.from_pretrained(path, **kwargs)``."""
    transformers = _transformers()
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"model directory not found: {directory}")
    config_file = directory / _CONFIG_FILE
    if not config_file.is_file():
        raise DataError(f"config file not found: {config_file}")
    raw = _read_json(config_file)
    if not isinstance(raw, dict) or LAYOUT_KEY not in raw:
        return model_class.from_pretrained(directory, **kwargs)
    dtype = _dtype_option(kwargs)
    config_class = getattr(model_class, "config_class", None)
    if config_class is None:
        raise UnsupportedModuleError(f"from_pretrained: {model_class.__name__} names no config class; pass a "
                                     f"concrete model class (GPT2LMHeadModel, not an Auto class)")  # fmt: skip
    try:
        config = config_class.from_pretrained(directory)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{config_file}: cannot read the config: {_first_line(exc)}") from None
    record = read_record(config, architecture_of(config, str(config_file)), str(config_file))
    assert record is not None  # the key is in the file
    base_sizes, stored = record.base, getattr(config, LAYOUT_KEY)
    _set_sizes(config, base_sizes)
    model = model_class(config)
    _load_weights(model, record.layout, directory, str(config_file))
    setattr(config, LAYOUT_KEY, stored)  # saving the loaded model again keeps its layout
    generation = directory / "generation_config.json"
    if generation.is_file() and model.can_generate():
        model.generation_config = transformers.GenerationConfig.from_pretrained(directory)
    if dtype is not None:
        nn.Module.to(model, dtype)
    model.eval()  # type: ignore[no-untyped-call]  # transformers leaves PreTrainedModel.eval unannotated; it returns model
    return model


__all__ = [
    "LAYOUT_KEY",
    "Architecture",
    "architecture_of",
    "first_difference",
    "from_pretrained",
    "sync_config",
    "sync_config_if_possible",
]
