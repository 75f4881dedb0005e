"""A compacted transformers model keeps a config that round-trips through save_pretrained /
from_pretrained: uniform layers through plain ``from_pretrained``, per-layer widths
through ``shrinkage.integrations.huggingface.from_pretrained`` (small configs, random
weights, nothing downloaded)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from shrinkage.compact import max_output_difference
from shrinkage.errors import ConfigError, DataError, ShrinkageError, UnsupportedModuleError
from shrinkage.integrations import huggingface as hf

from support.exactness import assert_compacts_exactly

transformers = pytest.importorskip("transformers")

VOCAB, WIDTH, INNER, HEADS, HEAD_DIM = 64, 32, 64, 4, 8


def _ids(seed: int, batch: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _bert() -> nn.Module:
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=2,
                                     num_attention_heads=HEADS, intermediate_size=INNER)  # fmt: skip
    return transformers.BertModel(config)


def _gpt2(initializer_range: float = 0.02) -> nn.Module:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=WIDTH, n_layer=2, n_head=HEADS, n_inner=INNER,
                                     bos_token_id=0, eos_token_id=1, pad_token_id=1,
                                     initializer_range=initializer_range)  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _llama() -> nn.Module:
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=INNER, num_hidden_layers=2,
                                      num_attention_heads=HEADS, num_key_value_heads=2)  # fmt: skip
    return transformers.LlamaModel(config)


def _vit() -> nn.Module:
    config = transformers.ViTConfig(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=HEADS,
                                    intermediate_size=INNER, image_size=16, patch_size=8)  # fmt: skip
    return transformers.ViTModel(config)


def _zero_bert_neurons(model: nn.Module, layer: int, rows: list[int]) -> None:
    dense = model.encoder.layer[layer].intermediate.dense
    dense.weight[rows] = 0
    dense.bias[rows] = 0


def _zero_gpt2_neurons(model: nn.Module, layer: int, rows: list[int]) -> None:
    fc = model.transformer.h[layer].mlp.c_fc  # Conv1D: weight (in, out)
    fc.weight[:, rows] = 0
    fc.bias[rows] = 0


def _zero_llama_neurons(model: nn.Module, layer: int, rows: list[int]) -> None:
    model.layers[layer].mlp.gate_proj.weight[rows] = 0  # silu(0) * up == 0 whatever up is


#: family -> (dense model, zero some MLP neurons of one layer, the config key of the MLP width)
FAMILIES: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module, int, list[int]], None], str]] = {
    "bert": (_bert, _zero_bert_neurons, "intermediate_size"),
    "gpt2": (_gpt2, _zero_gpt2_neurons, "n_inner"),
    "llama": (_llama, _zero_llama_neurons, "intermediate_size"),
}


def _zeroed(family: str, rows_per_layer: list[list[int]], build: Callable[[], nn.Module] | None = None) -> nn.Module:
    default, zero, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = (build or default)().eval()
    with torch.no_grad():
        for layer, rows in enumerate(rows_per_layer):
            zero(model, layer, rows)
    return model


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _assert_same_outputs(a: nn.Module, b: nn.Module, *inputs: tuple[torch.Tensor, ...]) -> None:
    for x in inputs:
        assert max_output_difference(a, b, x) <= 1e-6


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_neurons_in_every_layer_reload_with_plain_from_pretrained(family: str, tmp_path: Path) -> None:
    dense = _zeroed(family, [[0, 5, 9], [0, 5, 9]])
    small = assert_compacts_exactly(dense, (_ids(0),))
    hf.sync_config(small)
    key = FAMILIES[family][2]
    assert getattr(small.config, key) == INNER - 3
    assert not hasattr(small.config, hf.LAYOUT_KEY)
    small.save_pretrained(tmp_path)

    torch.manual_seed(123)  # a fresh model's random weights must all be overwritten
    loaded = type(small).from_pretrained(tmp_path).eval()
    assert getattr(loaded.config, key) == INNER - 3
    assert _params(loaded) == _params(small) < _params(dense)
    _assert_same_outputs(small, loaded, (_ids(1),), (_ids(2, batch=5, length=4),))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_different_neurons_per_layer_reload_through_the_recorded_layout(family: str, tmp_path: Path) -> None:
    dense = _zeroed(family, [[0, 5, 9, 40], [1, 2]])
    small = assert_compacts_exactly(dense, (_ids(0),))
    hf.sync_config(small)
    key = FAMILIES[family][2]
    assert getattr(small.config, key) == INNER  # the base model's width; the layout says the rest
    record = json.loads(small.config.to_json_string())[hf.LAYOUT_KEY]
    assert record["base"][key] == INNER and record["modules"]
    synced = small.config.to_dict()
    hf.sync_config(small)  # again: nothing changes
    assert small.config.to_dict() == synced
    small.save_pretrained(tmp_path)

    torch.manual_seed(123)
    loaded = hf.from_pretrained(type(small), tmp_path)
    assert not loaded.training
    assert _params(loaded) == _params(small) < _params(dense)
    _assert_same_outputs(small, loaded, (_ids(1),), (_ids(2, batch=5, length=4),))
    # the loaded model saves and loads again the same way
    loaded.save_pretrained(tmp_path / "again")
    _assert_same_outputs(small, hf.from_pretrained(type(small), tmp_path / "again"), (_ids(3),))


def test_reloaded_gpt2_generates_the_same_tokens(tmp_path: Path) -> None:
    # weights larger than GPT-2's default (std 0.02), under which a tiny random model
    # generates the same tokens whatever its weights
    dense = _zeroed("gpt2", [[0, 7, 8, 40], [3]], lambda: _gpt2(initializer_range=0.5))
    small = assert_compacts_exactly(dense, (_ids(0),))
    hf.sync_config(small)
    small.save_pretrained(tmp_path)
    torch.manual_seed(123)
    loaded = hf.from_pretrained(transformers.GPT2LMHeadModel, tmp_path)
    _assert_same_outputs(small, loaded, (_ids(1),))
    prompt = _ids(4)
    mask = torch.ones_like(prompt)
    with torch.no_grad():
        expected = small.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False)
        got = loaded.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert got.shape == (2, 13)
    assert torch.equal(got, expected)


def test_a_dense_model_keeps_its_config() -> None:
    torch.manual_seed(0)
    model = _llama().eval()
    before = model.config.to_dict()
    hf.sync_config(model)
    assert model.config.to_dict() == before


# -- heads, removed by hand: zero a head's output-projection columns in the dense model, then
# -- slice its query/key/value rows and those columns away


def _rows(heads: list[int]) -> list[int]:
    return [h * HEAD_DIM + i for h in heads for i in range(HEAD_DIM)]


def _slice(linear: nn.Linear, dim: int, keep: list[int]) -> None:
    """Keep only ``keep`` along ``dim`` of ``linear`` (0: outputs, 1: inputs), in place."""
    index = torch.tensor(keep)
    linear.weight = nn.Parameter(linear.weight.detach().index_select(dim, index).clone())
    if dim == 0 and linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.detach()[index].clone())
    if dim == 0:
        linear.out_features = len(keep)
    else:
        linear.in_features = len(keep)


def _drop_heads(model: nn.Module, attentions: list[tuple[list[nn.Linear], list[nn.Linear], nn.Linear]],
                kept: list[tuple[list[int], list[int]]]) -> None:  # fmt: skip
    """Per attention (query projections, key/value projections, output projection), keep
    query heads ``kept[i][0]`` and key/value heads ``kept[i][1]``."""
    for (queries, kvs, out), (q_heads, kv_heads) in zip(attentions, kept, strict=True):
        for layer in queries:
            _slice(layer, 0, _rows(q_heads))
        for layer in kvs:
            _slice(layer, 0, _rows(kv_heads))
        _slice(out, 1, _rows(q_heads))


def _zero_head_outputs(out: nn.Linear, heads: list[int]) -> None:
    with torch.no_grad():
        out.weight[:, _rows(heads)] = 0


def _llama_attentions(model: nn.Module) -> list[tuple[list[nn.Linear], list[nn.Linear], nn.Linear]]:
    return [([a.q_proj], [a.k_proj, a.v_proj], a.o_proj) for a in (layer.self_attn for layer in model.layers)]


def _vit_attentions(model: nn.Module) -> list[tuple[list[nn.Linear], list[nn.Linear], nn.Linear]]:
    return [([a.q_proj, a.k_proj, a.v_proj], [], a.o_proj) for a in (layer.attention for layer in model.layers)]


def _bert_attentions(model: nn.Module) -> list[tuple[list[nn.Linear], list[nn.Linear], nn.Linear]]:
    return [
        ([layer.attention.self.query, layer.attention.self.key, layer.attention.self.value], [],
         layer.attention.output.dense)
        for layer in model.encoder.layer
    ]  # fmt: skip


def _head_pruned(dense: nn.Module, attentions: Callable[[nn.Module], list], kept: list, example: tuple) -> nn.Module:
    """``dense`` with the heads outside ``kept`` zeroed, and a copy without them (checked equal)."""
    for (_, _, out), (q_heads, _) in zip(attentions(dense), kept, strict=True):
        _zero_head_outputs(out, [h for h in range(HEADS) if h not in q_heads])

    def prune(model: nn.Module, inputs: tuple) -> nn.Module:
        small = copy.deepcopy(model)
        _drop_heads(small, attentions(small), kept)
        return small

    return assert_compacts_exactly(dense, example, compact=prune)


def test_llama_without_a_key_value_group_reloads_with_plain_from_pretrained(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = _llama().eval()
    # query heads 2 and 3 share key/value head 1 (4 heads, 2 groups): all three go
    small = _head_pruned(dense, _llama_attentions, [([0, 1], [0]), ([0, 1], [0])], (_ids(0),))
    hf.sync_config(small)
    config = small.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, HEAD_DIM)
    assert not hasattr(config, hf.LAYOUT_KEY)
    small.save_pretrained(tmp_path)
    loaded = type(small).from_pretrained(tmp_path).eval()
    assert loaded.layers[1].self_attn.q_proj.out_features == 2 * HEAD_DIM
    _assert_same_outputs(small, loaded, (_ids(1),), (_ids(2, batch=5, length=4),))


def test_vit_heads_reload_with_plain_from_pretrained_once_the_head_size_is_pinned(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = _vit().eval()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    small = _head_pruned(dense, _vit_attentions, [([1, 2, 3], [])] * 2, (pixels,))
    hf.sync_config(small)
    # without head_dim, ViT would split its width 32 over 3 heads
    assert (small.config.num_attention_heads, small.config.head_dim) == (3, HEAD_DIM)
    small.save_pretrained(tmp_path)
    loaded = type(small).from_pretrained(tmp_path).eval()
    _assert_same_outputs(small, loaded, (torch.randn(3, 3, 16, 16),))


@pytest.mark.parametrize("kept", [[[0, 2], [0, 2]], [[0, 2], [1, 2, 3]]], ids=["uniform", "per-layer"])
def test_bert_heads_reload_through_the_layout(kept: list[list[int]], tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = _bert().eval()
    small = _head_pruned(dense, _bert_attentions, [(heads, []) for heads in kept], (_ids(0),))
    hf.sync_config(small)
    # BERT's head size is hidden_size / num_attention_heads: fewer heads in the config would
    # widen every head, so the config keeps 4 and the layout records the narrower projections
    assert small.config.num_attention_heads == HEADS
    assert "encoder.layer.0.attention.self.query" in small.config.shrinkage_layout["modules"]
    small.save_pretrained(tmp_path)
    loaded = hf.from_pretrained(type(small), tmp_path)
    assert loaded.encoder.layer[1].attention.self.key.out_features == len(kept[1]) * HEAD_DIM
    _assert_same_outputs(small, loaded, (_ids(1),), (_ids(2, batch=5, length=4),))


def _gpt2_without_head(model: nn.Module, head: int) -> nn.Module:
    """A copy of ``model`` whose attentions lost ``head`` (its query, key and value columns
    of the fused ``c_attn`` and its rows of ``c_proj``), with the counts the module reads."""
    small = copy.deepcopy(model)
    kept = [h for h in range(HEADS) if h != head]
    columns = [part * WIDTH + row for part in range(3) for row in _rows(kept)]
    for block in small.transformer.h:
        attn = block.attn
        attn.c_attn.weight = nn.Parameter(attn.c_attn.weight.detach()[:, columns].clone())
        attn.c_attn.bias = nn.Parameter(attn.c_attn.bias.detach()[columns].clone())
        attn.c_attn.nf = len(columns)
        attn.c_proj.weight = nn.Parameter(attn.c_proj.weight.detach()[_rows(kept)].clone())
        attn.c_proj.nx = len(kept) * HEAD_DIM
        attn.num_heads, attn.split_size = len(kept), len(kept) * HEAD_DIM
    return small


def test_gpt2_heads_reload_through_the_layout(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = _gpt2().eval()
    with torch.no_grad():
        for block in dense.transformer.h:
            block.attn.c_proj.weight[_rows([1])] = 0  # Conv1D: rows are inputs
    small = assert_compacts_exactly(dense, (_ids(0),), compact=lambda m, x: _gpt2_without_head(m, 1))
    hf.sync_config(small)
    assert small.config.n_head == HEADS and hf.LAYOUT_KEY in small.config.to_dict()
    small.save_pretrained(tmp_path)
    _assert_same_outputs(small, hf.from_pretrained(type(small), tmp_path), (_ids(1),))


# -- errors ----------------------------------------------------------------------------------


def test_an_unknown_architecture_is_one_line_naming_it() -> None:
    config = transformers.DistilBertConfig(vocab_size=VOCAB, dim=WIDTH, n_layers=1, n_heads=HEADS, hidden_dim=INNER)
    model = transformers.DistilBertModel(config)
    with pytest.raises(UnsupportedModuleError, match=r"DistilBertConfig \(model_type 'distilbert'\); known: bert"):
        hf.sync_config(model)
    with pytest.raises(UnsupportedModuleError, match="expected a transformers model, got Linear"):
        hf.sync_config(nn.Linear(2, 2))


def test_sync_if_possible_leaves_other_models_as_they_are() -> None:
    config = transformers.DistilBertConfig(vocab_size=VOCAB, dim=WIDTH, n_layers=1, n_heads=HEADS, hidden_dim=INNER)
    model = transformers.DistilBertModel(config)
    before = model.config.to_dict()
    assert "DistilBertConfig" in (hf.sync_config_if_possible(model) or "")
    assert model.config.to_dict() == before
    assert hf.sync_config_if_possible(nn.Linear(2, 2)) == "Linear is not a transformers model"
    small = _zeroed("llama", [[0, 5, 9], [0, 5, 9]])
    with torch.no_grad():  # a narrower model of the same architecture, as compaction makes it
        for layer in small.layers:
            for proj, dim in ((layer.mlp.gate_proj, 0), (layer.mlp.up_proj, 0), (layer.mlp.down_proj, 1)):
                _slice(proj, dim, list(range(10, INNER)))
    assert hf.sync_config_if_possible(small) is None
    assert small.config.intermediate_size == INNER - 10


@pytest.fixture(scope="module")
def gpt2_per_layer() -> nn.Module:
    """A compacted GPT-2 of different widths per layer, its config synced."""
    small = assert_compacts_exactly(_zeroed("gpt2", [[0, 1], [2]]), (_ids(0),))
    hf.sync_config(small)
    return small


@pytest.fixture(scope="module")
def saved_gpt2_once(gpt2_per_layer: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("gpt2")
    gpt2_per_layer.save_pretrained(directory)
    return directory


@pytest.fixture()
def saved_gpt2(saved_gpt2_once: Path, tmp_path: Path) -> Path:
    """A copy of the saved model directory, for a test to damage."""
    return Path(shutil.copytree(saved_gpt2_once, tmp_path / "saved"))


def test_weights_in_several_files_load_too(gpt2_per_layer: nn.Module, tmp_path: Path) -> None:
    gpt2_per_layer.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    loaded = hf.from_pretrained(transformers.GPT2LMHeadModel, tmp_path)
    _assert_same_outputs(gpt2_per_layer, loaded, (_ids(1),))
    next(tmp_path.glob("model-*.safetensors")).unlink()
    with pytest.raises(DataError, match=r"weight file 'model-\d+-of-\d+.safetensors' not found"):
        hf.from_pretrained(transformers.GPT2LMHeadModel, tmp_path)


def _edit_layout(directory: Path, edit: Callable[[dict], None]) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config["shrinkage_layout"])
    path.write_text(json.dumps(config))


def test_missing_files_are_named(saved_gpt2: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="model directory not found: .*nowhere"):
        hf.from_pretrained(transformers.GPT2LMHeadModel, tmp_path / "nowhere")
    (saved_gpt2 / "model.safetensors").unlink()
    with pytest.raises(DataError, match="no model.safetensors or model.safetensors.index.json"):
        hf.from_pretrained(transformers.GPT2LMHeadModel, saved_gpt2)
    (saved_gpt2 / "config.json").unlink()
    with pytest.raises(DataError, match="config file not found: .*config.json"):
        hf.from_pretrained(transformers.GPT2LMHeadModel, saved_gpt2)


def test_options_of_the_layout_path(saved_gpt2: Path) -> None:
    wide = hf.from_pretrained(transformers.GPT2LMHeadModel, saved_gpt2, dtype=torch.float64)
    assert {p.dtype for p in wide.parameters()} == {torch.float64}
    narrow = hf.from_pretrained(transformers.GPT2LMHeadModel, saved_gpt2)
    assert max_output_difference(narrow.double(), wide, (_ids(1),)) == 0.0
    with pytest.raises(ConfigError, match="option 'device_map' is not supported"):
        hf.from_pretrained(transformers.GPT2LMHeadModel, saved_gpt2, device_map="auto")
    with pytest.raises(UnsupportedModuleError, match="AutoModelForCausalLM names no config class"):
        hf.from_pretrained(transformers.AutoModelForCausalLM, saved_gpt2)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["modules"]["transformer.h.0.mlp.c_fc"]["args"].update(nf=70),
         r"entry 'transformer.h.0.mlp.c_fc' \(Conv1D\) has nf=70, more than the 64"),
        (lambda r: r["modules"]["transformer.h.1.mlp.c_fc"]["args"].update(nf=50),
         r"tensor 'transformer.h.1.mlp.c_fc.weight' has shape \(32, 63\), but the layout implies \(32, 50\)"),
        (lambda r: r["modules"].update({"transformer.h.9.mlp": {"type": "Linear", "args": {}}}),
         r"shrinkage_layout.modules\['transformer.h.9.mlp'\].args: missing key"),
        (lambda r: r["base"].update(vocab_size=10**9), r"shrinkage_layout.base: unknown key 'vocab_size'"),
        (lambda r: r.update(format="shrinkage.hf/9"), r"shrinkage_layout.format: expected one of 'shrinkage.hf/1'"),
    ],
    ids=["too-wide", "wrong-shape", "bad-entry", "base-key", "format"],
)  # fmt: skip
def test_a_bad_layout_is_one_line_naming_the_key(saved_gpt2: Path, edit: Callable, message: str) -> None:
    _edit_layout(saved_gpt2, edit)
    with pytest.raises(ShrinkageError, match=message) as caught:
        hf.from_pretrained(transformers.GPT2LMHeadModel, saved_gpt2)
    assert "\n" not in str(caught.value)


def test_importing_shrinkage_does_not_import_transformers() -> None:
    code = "import sys, shrinkage, shrinkage.integrations.huggingface; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
