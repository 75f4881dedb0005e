"""The models of the zoo benchmark, built with random weights (nothing is downloaded):
every torchvision classifier, popular timm models and small Hugging Face transformers,
their example inputs, and the zeroing of a fraction of their removable structures as a
converged group Lasso leaves them (coupled channel groups and attention heads)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shrinkage.compact.attention_types import attention_type_of
from shrinkage.errors import ShrinkageError
from shrinkage.groups import CoupledChannels, Grouping, Heads
from shrinkage.groups.coupled import space_grouping

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("torchvision", "timm", "transformers")
#: token ids of the transformers cases are drawn below this
VOCAB = 100


@dataclass(frozen=True)
class Case:
    """One model of the zoo: how to build it and what it reads (``vocab``: integer token
    ids below it instead of floats)."""

    family: str
    name: str
    input_shape: tuple[int, ...]
    make: Callable[[], nn.Module] = field(compare=False, repr=False)
    vocab: int | None = None

    @property
    def key(self) -> str:
        return f"{self.family}/{self.name}"

    def build(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.make().eval()

    def inputs(self, gen: torch.Generator, batch: int | None = None) -> tuple[Tensor]:
        shape = (batch or self.input_shape[0], *self.input_shape[1:])
        if self.vocab is not None:
            return (torch.randint(0, self.vocab, shape, generator=gen),)
        return (torch.randn(shape, generator=gen),)


# -- torchvision ----------------------------------------------------------------------

#: input side per model where the default (64) does not fit; ViTs are built for their size
TORCHVISION_SIZE = {"inception_v3": 75, "maxvit_t": 224, "vit_h_14": 56}
#: the auxiliary classifiers only run in training mode; ViTs take a smaller image size
TORCHVISION_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "vit_b_16": {"image_size": 64}, "vit_b_32": {"image_size": 64}, "vit_l_16": {"image_size": 64},
    "vit_l_32": {"image_size": 64}, "vit_h_14": {"image_size": 56},
}  # fmt: skip


def torchvision_cases() -> list[Case]:
    import torchvision

    def maker(name: str) -> Callable[[], nn.Module]:
        return lambda: getattr(torchvision.models, name)(weights=None, **TORCHVISION_KWARGS.get(name, {}))

    names = torchvision.models.list_models(module=torchvision.models)
    return [Case("torchvision", n, (2, 3, TORCHVISION_SIZE.get(n, 64), TORCHVISION_SIZE.get(n, 64)), maker(n))
            for n in names]  # fmt: skip


# -- timm -----------------------------------------------------------------------------

#: name -> (input side, create_model keyword arguments); 64 where the model allows it
TIMM: dict[str, tuple[int, dict[str, Any]]] = {
    "resnet18": (64, {}), "resnet50": (64, {}), "resnet18d": (64, {}), "resnext50_32x4d": (64, {}),
    "seresnet50": (64, {}), "ecaresnet50d": (64, {}), "cspresnet50": (64, {}), "res2net50_26w_4s": (64, {}),
    "resnest14d": (64, {}), "repvgg_a0": (64, {}), "dla34": (64, {}), "dpn68": (64, {}), "densenet121": (64, {}),
    "hrnet_w18_small": (64, {}), "regnety_008": (64, {}), "regnetx_002": (64, {}), "efficientnet_b0": (64, {}),
    "tf_efficientnet_b0": (64, {}), "mobilenetv2_100": (64, {}), "mobilenetv3_large_100": (64, {}),
    "mobilenetv4_conv_small": (64, {}), "lcnet_050": (64, {}), "ghostnet_100": (64, {}), "mixnet_s": (64, {}),
    "rexnet_100": (64, {}), "convnext_tiny": (64, {}), "poolformer_s12": (64, {}), "edgenext_small": (64, {}),
    "mobilevit_s": (64, {}), "efficientvit_b0": (64, {}), "fastvit_t8": (64, {}), "xcit_nano_12_p16_224": (64, {}),
    "vit_tiny_patch16_224": (64, {"img_size": 64}), "deit_tiny_patch16_224": (64, {"img_size": 64}),
    "mixer_s16_224": (64, {"img_size": 64}), "swin_tiny_patch4_window7_224": (224, {}), "levit_128": (224, {}),
    "efficientformer_l1": (224, {}), "coatnet_0_rw_224": (224, {}),
}  # fmt: skip


def timm_cases() -> list[Case]:
    import timm

    def maker(name: str, kwargs: dict[str, Any]) -> Callable[[], nn.Module]:
        return lambda: timm.create_model(name, pretrained=False, **kwargs)

    return [Case("timm", n, (2, 3, s, s), maker(n, kw)) for n, (s, kw) in TIMM.items()]


# -- Hugging Face transformers ---------------------------------------------------------

#: tiny sizes shared by the text models: 2 layers, width 32, 4 heads
_TEXT = {"vocab_size": VOCAB, "max_position_embeddings": 32, "use_cache": False}
_BERT = {
    **_TEXT,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
}
_DECODER = {
    **_BERT,
    "num_key_value_heads": 2,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
_PIXELS = (2, 3, 32, 32)
_IDS = (2, 8)


def _hf(model_class: str, config_class: str, **config: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        return getattr(transformers, model_class)(getattr(transformers, config_class)(**config))

    return make


def transformers_cases() -> list[Case]:
    text = [
        ("bert", _hf("BertForSequenceClassification", "BertConfig", **_BERT)),
        ("roberta", _hf("RobertaForSequenceClassification", "RobertaConfig", **{**_BERT, "max_position_embeddings": 40})),
        ("distilbert", _hf("DistilBertForSequenceClassification", "DistilBertConfig", vocab_size=VOCAB, dim=32,
                           n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=32)),
        ("gpt2", _hf("GPT2LMHeadModel", "GPT2Config", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                     bos_token_id=1, eos_token_id=2, use_cache=False)),
        ("llama", _hf("LlamaForCausalLM", "LlamaConfig", **_DECODER)),
        ("mistral", _hf("MistralForCausalLM", "MistralConfig", **_DECODER)),
        ("qwen2", _hf("Qwen2ForCausalLM", "Qwen2Config", **_DECODER)),
        ("t5_encoder", _hf("T5EncoderModel", "T5Config", vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                           num_heads=4, use_cache=False)),
    ]  # fmt: skip
    pixels = [
        ("vit", _hf("ViTForImageClassification", "ViTConfig", image_size=32, patch_size=8, hidden_size=32,
                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
        ("swin", _hf("SwinForImageClassification", "SwinConfig", image_size=32, patch_size=4, embed_dim=16,
                     depths=[1, 1], num_heads=[2, 4], window_size=4)),
        ("convnext", _hf("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[8, 16], depths=[1, 1],
                         num_stages=2, image_size=32)),
    ]  # fmt: skip
    return [Case("transformers", n, _IDS, make, VOCAB) for n, make in text] + [
        Case("transformers", n, _PIXELS, make) for n, make in pixels
    ]


def cases(family: str) -> list[Case]:
    return {
        "torchvision": torchvision_cases,
        "timm": timm_cases,
        "transformers": transformers_cases,
    }[family]()


def find(family: str, name: str) -> Case:
    found = [c for c in cases(family) if c.name == name]
    if not found:
        raise KeyError(f"no {family} model named {name!r} in the zoo")
    return found[0]


# -- zeroing --------------------------------------------------------------------------


def randomize_norm_stats(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics and shifts and non-zero biases, so a dead channel
    emits a non-zero constant that compaction has to fold."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.track_running_stats:
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
            elif isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)


def coupled_groupings(model: nn.Module, shape: tuple[int, ...], vocab: int | None) -> tuple[list[Grouping], str]:
    """The coupled groups of every conv and linear, and how they were found: by
    ``CoupledChannels`` (torch.fx) or, where it cannot trace the model, by the groups of
    the graph that compaction captures (torch.export, in versions that have it)."""
    chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, _linear_types())]
    try:
        return CoupledChannels(shape, vocab=vocab).build_for(model, chosen), "CoupledChannels"
    except ShrinkageError:
        capture_channel_graph = _compaction_capture()
        if capture_channel_graph is None:  # only the torch.fx capture exists: its refusal stands
            raise
    gen = torch.Generator().manual_seed(0)
    example = torch.randint(0, vocab, shape, generator=gen) if vocab is not None else torch.randn(shape, generator=gen)
    graph = capture_channel_graph(copy.deepcopy(model), (example,))
    params, selected = dict(model.named_parameters()), {n for n, _ in chosen}
    groupings: list[Grouping] = []
    for root in graph.table.roots():
        space = graph.table.get(root)
        if not space.pinned and not space.is_input and selected.intersection(s.module for s in space.producers):
            groupings.append(space_grouping(graph, params, root))
    return groupings, "captured graph"


def _linear_types() -> tuple[type[nn.Module], ...]:
    """The layers whose outputs are zeroed: convs, linears and transformers' ``Conv1D`` (GPT-2's
    linear layer, its weight stored transposed)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return (nn.Conv2d, nn.Linear)
    return (nn.Conv2d, nn.Linear, Conv1D)


def _compaction_capture() -> Callable[..., Any] | None:
    try:
        from shrinkage.graph.capture import capture_channel_graph
    except ImportError:
        return None
    return capture_channel_graph


def zero_coupled(
    model: nn.Module,
    shape: tuple[int, ...],
    gen: torch.Generator,
    fraction: float,
    vocab: int | None = None,
) -> tuple[int, str]:
    """Zero a random fraction of every coupled group set, as a group Lasso would; returns
    how many and how the groups were found."""
    groupings, found_by = coupled_groupings(model, shape, vocab)
    zeroed = 0
    with torch.no_grad():
        for g in groupings:
            matrix = g.gather()
            n = matrix.shape[0]
            rows = torch.randperm(n, generator=gen)[: int(n * fraction)]
            matrix[rows] = 0
            g.scatter_(matrix)
            zeroed += len(rows)
    return zeroed, found_by


def zero_heads(model: nn.Module, gen: torch.Generator, fraction: float) -> int:
    """Zero a random fraction of the heads of every attention layer; returns how many."""
    zeroed = 0
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.MultiheadAttention) or attention_type_of(m) is not None:
                for g in Heads().build(name, m):
                    matrix = g.gather()
                    rows = torch.randperm(matrix.shape[0], generator=gen)[: max(1, int(matrix.shape[0] * fraction))]
                    matrix[rows] = 0
                    g.scatter_(matrix)
                    zeroed += len(rows)
    return zeroed


@dataclass
class Prepared:
    """A zoo model with its structures zeroed, the example it was zeroed on and what
    zeroing found (``error``: why no coupled group could be built)."""

    model: nn.Module
    example: tuple[Tensor]
    zeroed_channels: int = 0
    zeroed_heads: int = 0
    groups_by: str | None = None
    error: str | None = None


def prepare(case: Case, fraction: float, seed: int = 0) -> Prepared:
    """Build ``case`` and zero ``fraction`` of its coupled channel groups and heads."""
    model = case.build(seed)
    gen = torch.Generator().manual_seed(seed)
    randomize_norm_stats(model, gen)
    example = case.inputs(gen)
    prepared = Prepared(model, example)
    try:
        prepared.zeroed_channels, prepared.groups_by = zero_coupled(model, case.input_shape, gen, fraction, case.vocab)
    except Exception as exc:  # noqa: BLE001  # the groups need the same capture as compaction: record why it failed
        prepared.error = one_line(exc)
    prepared.zeroed_heads = zero_heads(model, gen, fraction)
    return prepared


def one_line(exc: BaseException) -> str:
    """``Type: first line``, with paths relative to the repository (the results are shared)."""
    text = str(exc).strip().replace(f"{ROOT}/", "")
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
