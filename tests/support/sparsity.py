"""Helpers shared by the compaction tests: random sparsity patterns on real models."""

from __future__ import annotations

import torch
from torch import nn


def randomize_norm_stats(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics and shifts, so dead channels emit non-zero constants."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
            elif isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)


def zero_random_structures(model: nn.Module, gen: torch.Generator, fraction: float) -> None:
    """Zero random filters, input channels, filter-shape columns, neurons and BN scales."""

    def pick(n: int) -> torch.Tensor:
        k = max(1, int(n * fraction * float(torch.rand(1, generator=gen)) * 2))
        return torch.randperm(n, generator=gen)[: min(k, n - 1)]

    with torch.no_grad():
        for m in model.modules():
            kind = int(torch.randint(0, 4, (1,), generator=gen))
            if isinstance(m, nn.Conv2d) and m.groups == 1:
                if kind == 0:
                    m.weight[pick(m.out_channels)] = 0
                elif kind == 1:
                    m.weight[:, pick(m.in_channels)] = 0
                elif kind == 2:
                    cols = m.weight.view(m.out_channels, -1)
                    cols[:, pick(cols.shape[1])] = 0
            elif isinstance(m, nn.Linear):
                if kind in (0, 2):
                    m.weight[pick(m.out_features)] = 0
                elif kind == 1:
                    m.weight[:, pick(m.in_features)] = 0
            elif isinstance(m, nn.BatchNorm2d) and kind == 3:
                m.weight[pick(m.num_features)] = 0


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
