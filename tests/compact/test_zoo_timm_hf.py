"""Compaction of timm models and small Hugging Face transformers, built as the zoo
benchmark builds them (random weights, a quarter of every coupled group set and of the
attention heads zeroed, random BatchNorm statistics): equal outputs on fresh inputs and
fewer parameters. The models are those the benchmark finds exact (results/zoo.json)."""

from __future__ import annotations

import pytest
from support.exactness import assert_compacts_exactly
from support.zoo import zoo_models

pytest.importorskip("timm")
pytest.importorskip("transformers")

#: exact in results/zoo.json; the slower ones (over ~10 s each here) are left to the benchmark
EXACT = [
    ("timm", "resnet18"), ("timm", "resnet18d"), ("timm", "convnext_tiny"), ("timm", "poolformer_s12"),
    ("timm", "efficientvit_b0"), ("timm", "regnetx_002"), ("timm", "mobilenetv2_100"),
    ("transformers", "bert"), ("transformers", "roberta"), ("transformers", "distilbert"), ("transformers", "gpt2"),
    ("transformers", "llama"), ("transformers", "mistral"), ("transformers", "qwen2"), ("transformers", "t5_encoder"),
    ("transformers", "vit"), ("transformers", "swin"), ("transformers", "convnext"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("family", "name"), EXACT, ids=[f"{f}/{n}" for f, n in EXACT])
def test_zoo_model_compacts_exactly(family: str, name: str) -> None:
    zoo = zoo_models()
    prepared = zoo.prepare(zoo.find(family, name), fraction=0.25)
    assert prepared.error is None, prepared.error
    assert prepared.zeroed_channels + prepared.zeroed_heads > 0
    assert_compacts_exactly(prepared.model, prepared.example)
