"""Operations without a channel rule fail loudly, or are left untouched when asked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import shrinkage
from shrinkage.compact import CompactOptions
from shrinkage.errors import UnsupportedModuleError

from support.exactness import assert_compacts_exactly


class Gram(nn.Module):
    """conv -> a spectral mix of the channels that no rule covers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean(dim=(2, 3))  # (N, 8)
        y = torch.fft.fft(y, dim=1).abs()  # mixes channels: no rule in either capture
        return self.fc(y)


def test_unknown_operation_is_named_with_its_node() -> None:
    model = Gram().eval()
    with pytest.raises(UnsupportedModuleError, match="fft_fft at graph node 'fft_fft'"):
        shrinkage.compact(model, (torch.randn(2, 3, 8, 8),))


def test_opt_in_leaves_unknown_channels_untouched_and_stays_exact() -> None:
    model = Gram().eval()
    with torch.no_grad():
        model.conv.weight[[1, 2]] = 0
        model.fc.weight[[0]] = 0
    options = CompactOptions(allow_unknown=True)
    # fc's zero row is a model output, so nothing may go: exact and no larger
    small = assert_compacts_exactly(model, torch.randn(2, 3, 8, 8), options=options, fewer_params=False)
    assert small.conv.out_channels == 8  # feeds the unknown op: untouched


def test_untraceable_model_is_named() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(UnsupportedModuleError, match="Branchy"):
        shrinkage.compact(Branchy(), (torch.randn(2, 4),))
