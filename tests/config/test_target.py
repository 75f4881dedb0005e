"""The ``target:`` block of a run config: loading, overrides, one-line errors, the selection it implies."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from shrinkage import Budget
from shrinkage.config import (
    PenalizedGroups,
    SelectionMethod,
    TargetConfig,
    default_selection,
    load_config,
    parse_config,
    to_dict,
)
from shrinkage.config.fields import FieldError
from shrinkage.io import write_yaml

from support.config import config_error

REPO = Path(__file__).resolve().parents[2]

BASE = textwrap.dedent(
    """\
    name: t
    model: {name: lenet}
    train: {lr: 0.01, epochs: 2}
    """
)


def test_target_block_loads_from_yaml() -> None:
    text = BASE + "target: {macs: 0.25, params: 0.5, round_to: 4, finetune_epochs: 3, distill_weight: 0.5}\n"
    target = parse_config(text, "run.yaml").target
    assert target == TargetConfig(macs=0.25, params=0.5, round_to=4, finetune_epochs=3, distill_weight=0.5)
    assert target.budget() == Budget(macs=0.25, params=0.5)
    assert target.temperature == 4.0 and target.finetune_lr is None and target.batch_size == 1


@pytest.mark.parametrize("text", [BASE, BASE + "target: null\n"])
def test_no_target_is_none(text: str) -> None:
    assert parse_config(text, "run.yaml").target is None


def test_override_creates_the_missing_target_section() -> None:
    config = parse_config(BASE, "run.yaml", ["target.macs=0.25", "target.finetune_epochs=2"])
    assert config.target == TargetConfig(macs=0.25, finetune_epochs=2)


def test_out_of_range_override_is_one_line_naming_the_key() -> None:
    message = config_error(BASE, ("target.macs=1.5",))
    assert message == "--set target.macs=1.5: target.macs: must be in (0, 1], got 1.5"


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("macs: 0", "target.macs"),
        ("macs: -0.1", "target.macs"),
        ("params: 2", "target.params"),
        ("macs: .nan", "target.macs"),
        ("latency_ms: 0", "target.latency_ms"),
        ("macs: 0.5, batch_size: 0", "target.batch_size"),
        ("macs: 0.5, round_to: 0", "target.round_to"),
        ("macs: 0.5, finetune_epochs: -1", "target.finetune_epochs"),
        ("macs: 0.5, finetune_lr: 0", "target.finetune_lr"),
        ("macs: 0.5, distill_weight: 1.5", "target.distill_weight"),
        ("macs: 0.5, temperature: 0", "target.temperature"),
        ("macs: 0.5, temperature: yes", "target.temperature"),
        ("finetune_epochs: 2", "target.macs"),  # no target at all: names where one goes
        ("mac: 0.5", "target.mac"),
    ],
)
def test_invalid_target_values(line: str, key: str) -> None:
    message = config_error(BASE + f"target: {{{line}}}\n")
    assert message.startswith(f"run.yaml: {key}: "), message


def test_typo_in_a_target_key_suggests_the_right_one() -> None:
    assert "did you mean 'target.macs'" in config_error(BASE, ("target.mac=0.2",))


def test_field_errors_name_the_field() -> None:
    with pytest.raises(FieldError) as info:
        TargetConfig(params=0.5, distill_weight=-0.1)
    assert info.value.field == "distill_weight"
    with pytest.raises(FieldError) as info:
        TargetConfig()
    assert info.value.field == "macs" and "at least one of macs, params, latency_ms" in str(info.value)


def test_written_config_reads_back_with_its_target(tmp_path: Path) -> None:
    config = parse_config(BASE, "run.yaml", ["target.latency_ms=2.5", "target.batch_size=8"])
    write_yaml(tmp_path / "config.yaml", to_dict(config))
    again = load_config(tmp_path / "config.yaml")
    assert again == config
    assert again.target.budget() == Budget(latency_ms=2.5, batch_size=8)


def test_of_budget_keeps_the_budget_and_takes_recovery_settings() -> None:
    target = TargetConfig.of_budget(Budget(params=0.1), finetune_epochs=2, temperature=2.0)
    assert target.budget() == Budget(params=0.1)
    assert (target.finetune_epochs, target.temperature) == (2, 2.0)


@pytest.mark.parametrize(
    ("config", "method"),
    [
        ("lenet_baseline.yaml", SelectionMethod.PRUNE),  # no rules
        ("lenet_ssl_filters_channels.yaml", SelectionMethod.PRUNE),  # group Lasso
        ("lenet_nuclear.yaml", SelectionMethod.FACTORIZE),
        ("lenet_nuclear_sgl.yaml", SelectionMethod.FACTORIZE),  # nuclear norm in one of its rules
    ],
)
def test_selection_follows_the_regularization(config: str, method: SelectionMethod) -> None:
    assert default_selection(load_config(REPO / "configs" / config).regularization) is method


def test_target_penalize_selects_which_groups_the_controller_penalizes() -> None:
    config = parse_config(BASE, "run.yaml", ["target.macs=0.5", "target.penalize=weakest"])
    assert config.target is not None and config.target.penalize is PenalizedGroups.WEAKEST
    default = parse_config(BASE, "run.yaml", ["target.macs=0.5"]).target
    assert default is not None and default.penalize is PenalizedGroups.ALL
    message = config_error(BASE, ("target.macs=0.5", "target.penalize=some"))
    assert "target.penalize" in message and "weakest" in message
