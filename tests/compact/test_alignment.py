"""channel_multiple: the width kept channels are rounded to on a device."""

from __future__ import annotations

import pytest
import torch

import shrinkage
from shrinkage.errors import ConfigError


@pytest.mark.parametrize(("capability", "expected"), [("AVX512", 16), ("AVX2", 8), ("DEFAULT", 1), ("SVE256", 1)])
def test_cpu_multiple_follows_the_instruction_set(capability: str, expected: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert shrinkage.channel_multiple() == expected
    assert shrinkage.channel_multiple("cpu") == expected


def test_cuda_multiple_needs_no_gpu() -> None:
    assert shrinkage.channel_multiple(torch.device("cuda")) == 8
    assert shrinkage.channel_multiple("meta") == 1


def test_a_bad_device_is_named() -> None:
    with pytest.raises(ConfigError, match="channel_multiple: 'gpu0' is not a device"):
        shrinkage.channel_multiple("gpu0")


def test_pruning_to_the_multiple_keeps_every_width_a_multiple(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3), torch.nn.ReLU(), torch.nn.Conv2d(24, 32, 3),
                                torch.nn.ReLU(), torch.nn.Conv2d(32, 4, 1)).eval()  # fmt: skip
    x = torch.randn(1, 3, 12, 12)
    result = shrinkage.prune(model, x, shrinkage.Budget(macs=0.5), round_to=shrinkage.channel_multiple())
    widths = [m.out_channels for m in result.compact.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths[-1] == 4 and all(w % 8 == 0 for w in widths[:-1]) and widths[:-1] != [24, 32]


def test_cli_round_to_auto_is_the_device_multiple(monkeypatch: pytest.MonkeyPatch) -> None:
    from shrinkage.cli.main import _round_to

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert _round_to("auto") == 8 and _round_to("4") == 4
    with pytest.raises(ConfigError, match="--round-to: '8x' is neither an integer nor 'auto'"):
        _round_to("8x")
