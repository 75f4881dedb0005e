"""Per-layer timing: which layers are matched and timed on which inputs, the arithmetic of
times, shares and ratios (exact, with an injected timer), rendering, bad arguments."""

import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from shrinkage.errors import ConfigError, UnsupportedModuleError
from shrinkage.layers import LoweredConv2d, SelectInputs
from shrinkage.metrics import LayerLatency, layer_latency, layer_latency_markdown, render_markdown, write_report
from shrinkage.metrics.layer_latency import NEW, NOT_CALLED, REMOVED, describe_form

X = torch.randn(1, 3, 8, 8)


def _dense() -> nn.Module:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 8, 3),  # 8x8 -> 6x6
        bn=nn.BatchNorm2d(8),
        relu=nn.ReLU(),
        conv2=nn.Conv2d(8, 8, 3, padding=1),
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc=nn.Linear(8, 4),
        head=nn.Linear(4, 2),
    ))  # fmt: skip


def _compact() -> nn.Module:
    """What compaction could make of ``_dense``: input channels selected, fewer filters, a
    lowered conv, a factorized pair, a removed layer and a layer under a new name."""
    lowered = LoweredConv2d(nn.Conv2d(6, 6, 3, padding=1), torch.arange(0, 54, 2))
    return nn.Sequential(OrderedDict(
        conv=nn.Sequential(OrderedDict(select=SelectInputs(torch.tensor([0, 2]), dim=1), layer=nn.Conv2d(2, 6, 3))),
        bn=nn.BatchNorm2d(6),
        relu=nn.ReLU(),
        conv2=lowered,
        pool=nn.AdaptiveAvgPool2d(1),
        flatten=nn.Flatten(),
        fc=nn.Sequential(OrderedDict(project=nn.Linear(6, 2, bias=False), expand=nn.Linear(2, 4))),
        tail=nn.Linear(4, 2),
    ))  # fmt: skip


def running_timer(per_call_ms: dict[str, float], seen: list[str] | None = None) -> Callable:
    """A fake timer that does call each run once (so a wrong captured input would raise)
    and reports a fixed number of milliseconds per call for each label."""

    def timer(label: str, run: Callable[[], object], calls: int) -> float:
        run()
        if seen is not None:
            seen.append(label)
        return calls * per_call_ms[label] * 1e-3

    return timer


COSTS = {
    "dense": 10.0, "compact": 5.0,
    "dense:conv": 2.0, "dense:bn": 0.5, "dense:conv2": 3.0, "dense:fc": 1.0, "dense:head": 0.5,
    "compact:conv": 1.0, "compact:bn": 0.25, "compact:conv2": 1.5, "compact:fc": 0.5, "compact:tail": 0.25,
}  # fmt: skip


def _timed(**kwargs) -> LayerLatency:
    settings = {"rounds": 4, "calls_per_round": 2, "timer": running_timer(COSTS), **kwargs}
    return layer_latency(_dense(), _compact(), (X,), **settings)


def test_layers_matched_by_name_including_compacted_replacements() -> None:
    result = _timed()
    rows = {row.name: row for row in result.rows}
    assert list(rows) == ["conv", "bn", "conv2", "fc", "head", "tail"]
    assert rows["conv"].kind == "Conv2d" and rows["conv"].compact_type == "Sequential"
    assert rows["conv"].compact_form.startswith("Sequential(select=SelectInputs(dim=1, kept=2), layer=Conv2d(2, 6")
    assert rows["conv2"].compact_type == "LoweredConv2d" and rows["conv2"].compact_form.startswith("LoweredConv2d(")
    assert rows["fc"].compact_form == ("Sequential(project=Linear(in_features=6, out_features=2, bias=False), "
                                       "expand=Linear(in_features=2, out_features=4, bias=True))")
    assert rows["bn"].compact_type == "BatchNorm2d"
    assert (rows["head"].compact_type, rows["head"].compact_form, rows["head"].compact_ms) == (REMOVED, REMOVED, 0.0)
    assert rows["head"].speedup is None and rows["head"].mac_ratio is None
    assert (rows["tail"].kind, rows["tail"].compact_type, rows["tail"].dense_ms) == (None, NEW, None)
    assert rows["tail"].compact_ms == pytest.approx(0.25)


def test_times_shares_speedups_and_mac_ratios() -> None:
    result = _timed()
    rows = {row.name: row for row in result.rows}
    conv = rows["conv"]
    assert (conv.dense_ms, conv.compact_ms, conv.speedup) == pytest.approx((2.0, 1.0, 2.0))
    assert (conv.dense_share, conv.compact_share) == pytest.approx((0.2, 0.2))
    assert (conv.dense_calls, conv.compact_calls) == (1, 1)
    # 6x6 outputs: dense 8 filters x 27 inputs, compact 6 filters x 18 inputs (select is free)
    assert (conv.dense_macs, conv.compact_macs) == (8 * 27 * 36, 6 * 18 * 36)
    assert conv.mac_ratio == pytest.approx(2.0)
    assert rows["fc"].dense_macs == 32 and rows["fc"].compact_macs == 12 + 8
    assert (result.dense_ms, result.compact_ms, result.speedup) == pytest.approx((10.0, 5.0, 2.0))
    assert result.dense_layers_ms == pytest.approx(7.0) and result.compact_layers_ms == pytest.approx(3.5)
    assert (result.dense_layers_share, result.dense_other_share) == pytest.approx((0.7, 0.3))
    assert (result.dense_other_ms, result.compact_other_ms) == pytest.approx((3.0, 1.5))
    assert result.rounds == 4 and result.batch_size == 1
    assert conv.dense_spread == 0.0


def test_every_layer_is_timed_on_the_input_it_receives() -> None:
    """The fake timer calls every run: a compact layer fed the dense layer's input (3
    channels instead of 2 selected, 8 features instead of 6) would raise."""
    seen: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    compact = _compact()
    compact.fc.register_forward_pre_hook(lambda module, args: shapes.update(fc=tuple(args[0].shape)))
    layer_latency(_dense(), compact, X, rounds=1, calls_per_round=1, timer=running_timer(COSTS, seen))
    assert shapes["fc"] == (1, 6)
    assert set(seen) == set(COSTS)
    # dense and compact layers interleave: the first round is not all dense then all compact
    first_round = seen[-len(COSTS):]
    sides = [label.split(":")[0] for label in first_round]
    assert sides != sorted(sides) and sides != sorted(sides, reverse=True)


class _Shared(nn.Module):
    """One Linear applied twice, and an attention whose out_proj never runs on its own."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(self.fc(x))
        return self.attn(x, x, x, need_weights=False)[0]


def test_repeated_layers_and_functional_children() -> None:
    model = _Shared()
    costs = {"dense": 4.0, "compact": 4.0, "dense:fc": 0.5, "compact:fc": 0.5, "dense:attn": 2.0, "compact:attn": 2.0}
    result = layer_latency(model, model, torch.randn(1, 3, 4), rounds=2, calls_per_round=1,
                           timer=running_timer(costs))
    rows = {row.name: row for row in result.rows}
    assert list(rows) == ["fc", "attn"]  # attn.out_proj is timed as part of attn
    assert rows["fc"].dense_calls == 2 and rows["fc"].dense_ms == pytest.approx(1.0)
    assert rows["attn"].dense_share == pytest.approx(0.5)


def test_compact_layer_that_is_never_called() -> None:
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x)

    dense = nn.Sequential(OrderedDict(a=nn.Linear(4, 4), b=nn.Linear(4, 4)))
    costs = {"dense": 2.0, "compact": 1.0, "dense:a": 1.0, "dense:b": 1.0, "compact:a": 1.0}
    rows = {r.name: r for r in layer_latency(dense, Skips(), torch.randn(1, 4), rounds=1, timer=running_timer(costs)).rows}
    assert rows["b"].compact_ms == 0.0 and rows["b"].compact_form.endswith(f"({NOT_CALLED})")


def test_real_timing_runs_and_restores_modes() -> None:
    dense, compact = _dense().train(), _compact().train()
    result = layer_latency(dense, compact, X, min_run_time=0.01, threads=1)
    assert dense.training and compact.training and dense.bn.training
    assert result.threads == 1 and result.rounds >= 1
    assert all(row.compact_ms >= 0 for row in result.rows)
    assert all(row.dense_ms > 0 for row in result.rows if row.kind is not None)


def test_markdown_and_json(tmp_path: Path) -> None:
    result = _timed()
    text = layer_latency_markdown(result)
    lines = text.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["layer", "kind", "dense ms", "dense share", "compact ms", "compact share", "speedup",
                      "MAC ratio", "compact form"]
    conv = next(line for line in lines if line.startswith("| `conv` "))
    cells = [c.strip() for c in conv.strip("|").split("|")]
    assert cells[2:8] == ["2.000", "20.00%", "1.000", "20.00%", "2.00×", "2.00×"]
    assert cells[8].startswith("`Sequential(select=SelectInputs(dim=1, kept=2)")
    head = next(line for line in lines if line.startswith("| `head` "))
    assert head.endswith("| 0.000 | 0.00% | removed | no MACs left | removed |")
    other = next(line for line in lines if line.startswith("| other"))
    assert "| 3.000 | 30.00% | 1.500 | 30.00% | 2.00× |" in other
    assert any(line.startswith("| **whole model** |  | 10.000 |") for line in lines)

    report = {"run": {"name": "t"}, "layer_latency": result.as_dict()}
    write_report(tmp_path, report)
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert loaded["layer_latency"]["rows"][0]["compact_type"] == "Sequential"
    assert loaded["layer_latency"]["dense_other_share"] == pytest.approx(0.3)
    markdown = (tmp_path / "report.md").read_text()
    assert "## Time per layer" in markdown and text in markdown
    assert render_markdown(loaded) == markdown


def test_describe_form_names_children() -> None:
    assert describe_form(nn.ReLU()) == "ReLU()"
    assert describe_form(nn.Sequential(nn.Linear(2, 3))) == "Sequential(0=Linear(in_features=2, out_features=3, bias=True))"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"example_inputs": [X]}, ConfigError, "layer_latency: example_inputs must be a tensor or a tuple of inputs, got list"),
        ({"dense": "model"}, UnsupportedModuleError, "layer_latency: dense: expected a torch.nn.Module, got str"),
        ({"min_run_time": 0}, ConfigError, "layer_latency: min_run_time must be a number of seconds > 0, got 0"),
        ({"rounds": 0}, ConfigError, "layer_latency: rounds must be a positive integer, got 0"),
        ({"threads": 0}, ConfigError, "layer_latency: threads must be a positive integer, got 0"),
    ],
)
def test_bad_arguments_give_one_line(kwargs: dict, error: type, message: str) -> None:
    arguments = {"dense": _dense(), "compact": _compact(), "example_inputs": (X,), **kwargs}
    with pytest.raises(error) as info:
        layer_latency(arguments.pop("dense"), arguments.pop("compact"), arguments.pop("example_inputs"), **arguments)
    assert str(info.value) == message
