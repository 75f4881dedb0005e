"""Tests for the model zoo: shapes, parameter counts, fx tracing, registry errors."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from shrinkage.errors import ConfigError
from shrinkage.zoo import MODELS, CifarResNet, LeNet, ModelSpec, build_model, resnet20
from shrinkage.zoo.resnet_cifar import BasicBlock

ALLOWED_LAYERS = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Linear,
    nn.Identity,
)
GEOMETRIES = {"mnist": (1, 28), "cifar": (3, 32)}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_and_trace(name: str, geometry: str) -> None:
    channels, size = GEOMETRIES[geometry]
    torch.manual_seed(0)
    model = build_model(ModelSpec(name, in_channels=channels, num_classes=7, image_size=size))
    model.eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7)

    traced = fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), out)

    leaves = [m for m in model.modules() if not list(m.children())]
    assert all(isinstance(m, ALLOWED_LAYERS) for m in leaves), {type(m) for m in leaves}


def test_lenet_layout_and_parameters() -> None:
    model = LeNet()
    assert [name for name, _ in model.named_children()] == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2",
    ]  # fmt: skip
    per_layer = {name: _count(m) for name, m in model.named_children() if _count(m)}
    assert per_layer == {"conv1": 520, "conv2": 25050, "fc1": 400500, "fc2": 5010}
    assert _count(model) == 431080
    assert LeNet(in_channels=3, image_size=32).fc1.in_features == 50 * 5 * 5
    with pytest.raises(ConfigError, match="image_size"):
        LeNet(image_size=12)


def test_mlp_layout_and_parameters() -> None:
    model = build_model(ModelSpec("mlp"))
    assert [name for name, _ in model.named_children()] == [
        "flatten", "fc1", "relu1", "fc2", "relu2", "fc3",
    ]  # fmt: skip
    expected = (784 * 500 + 500) + (500 * 300 + 300) + (300 * 10 + 10)
    assert expected == 545810 and _count(model) == expected
    assert build_model(ModelSpec("mlp", in_channels=3, image_size=32)).fc1.in_features == 3072


def test_convnet_layout() -> None:
    model = build_model(ModelSpec("convnet"))
    names = [name for name, _ in model.named_children()]
    assert names == [
        "conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2", "pool2",
        "conv3", "bn3", "relu3", "avgpool", "flatten", "fc",
    ]  # fmt: skip
    assert [model.conv1.out_channels, model.conv2.out_channels, model.conv3.out_channels] == [
        32, 64, 128,
    ]  # fmt: skip


def test_resnet_structure() -> None:
    model = resnet20()
    assert 0.26e6 < _count(model) < 0.28e6
    for stage, blocks in enumerate((model.layer1, model.layer2, model.layer3)):
        assert len(blocks) == 3 and all(isinstance(b, BasicBlock) for b in blocks)
        first = blocks[0]
        if stage == 0:
            assert isinstance(first.shortcut, nn.Identity)
        else:
            conv, bn = first.shortcut
            assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
            assert conv.stride == (2, 2) and isinstance(bn, nn.BatchNorm2d)
        assert all(isinstance(b.shortcut, nn.Identity) for b in list(blocks)[1:])
    assert len(build_model(ModelSpec("resnet32", in_channels=3)).layer2) == 5
    assert len(build_model(ModelSpec("resnet56", in_channels=3)).layer3) == 9
    bn_weights = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(w == 1) for w in bn_weights)


def test_resnet_trace_keeps_named_modules() -> None:
    traced = fx.symbolic_trace(resnet20())
    targets = {node.target for node in traced.graph.nodes if node.op == "call_module"}
    assert {"conv1", "layer2.0.shortcut.0", "layer3.2.conv2", "fc"} <= targets


def test_unknown_model_and_bad_spec() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(ModelSpec("vgg16"))
    message = str(info.value)
    assert "'vgg16'" in message and "lenet" in message and "resnet56" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="num_classes"):
        build_model(ModelSpec("lenet", num_classes=0))
    with pytest.raises(ConfigError, match="depth"):
        CifarResNet(21)
