"""Depth removal: a residual branch whose weights are all zero disappears and only the
shortcut (plus the constant the branch emitted) remains, with equal outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shrinkage.groups import Depth
from shrinkage.layers import HeadPrunedAttention, ZeroWidthConv
from shrinkage.metrics import count_macs

from support.exactness import assert_compacts_exactly
from support.sparsity import randomize_norm_stats

torchvision = pytest.importorskip("torchvision")
from torchvision.models.resnet import Bottleneck, ResNet  # noqa: E402
from torchvision.models.vision_transformer import VisionTransformer  # noqa: E402


def _zero_branch(model: nn.Module, names: list[str]) -> None:
    """SSL's depth-wise group: every parameter of the branch's layers at zero."""
    with torch.no_grad():
        for name in names:
            for grouping in Depth().build(name, model.get_submodule(name)):
                grouping.scatter_(torch.zeros(grouping.shape))


def test_resnet_basic_blocks_with_a_zero_last_conv_are_removed() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    randomize_norm_stats(model, torch.Generator().manual_seed(0))
    with torch.no_grad():  # the last conv alone suffices: the first then feeds nobody
        model.layer2[1].conv2.weight.zero_()
        model.layer3[0].conv2.weight.zero_()  # a block with a strided, downsampling shortcut
    x = torch.randn(2, 3, 64, 64)
    small = assert_compacts_exactly(model, x)
    for block in (small.layer2[1], small.layer3[0]):
        assert isinstance(block.conv1, ZeroWidthConv) and block.conv1.out_channels == 0
        assert isinstance(block.conv2, ZeroWidthConv) and block.conv2.in_channels == 0
        assert isinstance(block.bn1, nn.Identity)
    macs_before, macs_after = count_macs(model, (x,)), count_macs(small, (x,))
    removed = sum(macs_before.per_module[f"{b}.conv{i}"] for b in ("layer2.1", "layer3.0") for i in (1, 2))
    assert macs_before.total - macs_after.total == removed  # the branches cost nothing any more
    assert small.layer3[0].downsample is not None  # the shortcut stays


def test_resnet_bottleneck_branch_zeroed_by_a_depth_group_is_removed() -> None:
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [2, 2, 1, 1], num_classes=10).eval()
    randomize_norm_stats(model, torch.Generator().manual_seed(1))
    _zero_branch(model, [f"layer1.1.{layer}{i}" for i in (1, 2, 3) for layer in ("conv", "bn")])
    small = assert_compacts_exactly(model, torch.randn(2, 3, 32, 32))
    block = small.layer1[1]
    assert isinstance(block.conv1, ZeroWidthConv) and isinstance(block.conv2, ZeroWidthConv)
    assert isinstance(block.conv3, ZeroWidthConv) and block.conv3.in_channels == 0


def test_vit_attention_and_mlp_sub_blocks_are_removed() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=4, hidden_dim=32, mlp_dim=64).eval()
    with torch.no_grad():
        attn = model.encoder.layers[0].self_attention
        attn.in_proj_weight[64:] = 0  # every head's values
        attn.in_proj_bias[64:] = 0
        model.encoder.layers[1].mlp[3].weight.zero_()  # the MLP's output projection
    small = assert_compacts_exactly(model, torch.randn(2, 3, 32, 32))
    first, second = small.encoder.layers[0], small.encoder.layers[1]
    assert isinstance(first.self_attention, HeadPrunedAttention) and first.self_attention.num_heads == 0
    assert second.mlp[0].out_features == 0 and second.mlp[3].in_features == 0


class _PooledBranch(nn.Module):
    """A branch whose hidden channels pass a pooling op, which cannot run on zero channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.pool, self.conv2 = nn.Conv2d(4, 6, 3, padding=1), nn.MaxPool2d(3, 1, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.pool(torch.relu(self.conv1(x))))


def test_a_branch_through_pooling_keeps_one_channel() -> None:
    torch.manual_seed(0)
    model = _PooledBranch().eval()
    with torch.no_grad():
        model.conv2.weight.zero_()
    small = assert_compacts_exactly(model, torch.randn(2, 4, 8, 8))
    assert small.conv1.out_channels == 1 and small.conv2.in_channels == 1
