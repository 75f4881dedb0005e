"""Loading run configs: schema errors name the dotted key and file; overrides; round trip."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from shrinkage.config import (
    CosineSchedule,
    GroupName,
    Mode,
    StepSchedule,
    load_config,
    parse_config,
    to_dict,
)
from shrinkage.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

BASE = textwrap.dedent(
    """\
    name: t
    model: {name: lenet}
    data: {name: mnist}
    train: {lr: 0.01, epochs: 2}
    regularization:
      rules:
        - select: {types: [Conv2d]}
          groups: [filters, channels]
          penalty: {kind: group_lasso, strength: 1.0e-3}
    compact: {energy: 0.9}
    """
)


def write(tmp_path: Path, text: str = BASE) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str = BASE, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_config_is_typed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path))
    assert config.train.lr == 0.01 and config.train.epochs == 2
    assert config.regularization.mode is Mode.PROXIMAL
    assert config.regularization.rules[0].groups == (GroupName.FILTERS, GroupName.CHANNELS)
    # geometry comes from the dataset when not given
    assert (config.model.in_channels, config.model.num_classes, config.model.image_size) == (1, 10, 28)


def test_unknown_key_names_dotted_key_file_and_suggestion(tmp_path: Path) -> None:
    message = error_of(tmp_path, BASE.replace("lr: 0.01", "lrr: 0.01"))
    assert "train.lrr" in message and "run.yaml" in message
    assert "did you mean 'train.lr'" in message


def test_unknown_nested_key_in_rule(tmp_path: Path) -> None:
    message = error_of(tmp_path, BASE.replace("strength: 1.0e-3", "strenght: 1.0e-3"))
    assert "regularization.rules[0].penalty.strenght" in message
    assert "did you mean 'regularization.rules[0].penalty.strength'" in message


def test_mistyped_value(tmp_path: Path) -> None:
    message = error_of(tmp_path, BASE.replace("epochs: 2", "epochs: two"))
    assert "train.epochs" in message and "integer" in message and "run.yaml" in message


def test_negative_strength(tmp_path: Path) -> None:
    message = error_of(tmp_path, BASE.replace("strength: 1.0e-3", "strength: -1.0e-3"))
    assert "regularization.rules[0].penalty.strength" in message


def test_negative_lr(tmp_path: Path) -> None:
    assert "train.lr" in error_of(tmp_path, BASE.replace("lr: 0.01", "lr: -0.01"))


def test_negative_epochs(tmp_path: Path) -> None:
    assert "train.epochs" in error_of(tmp_path, BASE.replace("epochs: 2", "epochs: -1"))


@pytest.mark.parametrize("energy", ["0", "1.5"])
def test_energy_out_of_range(tmp_path: Path, energy: str) -> None:
    message = error_of(tmp_path, BASE.replace("energy: 0.9", f"energy: {energy}"))
    assert "compact.energy" in message and "(0, 1]" in message


def test_unknown_group_kind(tmp_path: Path) -> None:
    message = error_of(tmp_path, BASE.replace("[filters, channels]", "[filter]"))
    assert "regularization.rules[0].groups" in message and "did you mean 'filters'" in message


def test_unknown_penalty_kind_and_module_type(tmp_path: Path) -> None:
    assert "penalty.kind" in error_of(tmp_path, BASE.replace("group_lasso", "group_laso"))
    message = error_of(tmp_path, BASE.replace("[Conv2d]", "[Conv2]"))
    assert "regularization.rules[0].select.types" in message and "Conv2d" in message


def test_missing_required_key(tmp_path: Path) -> None:
    assert "train.lr: missing" in error_of(tmp_path, BASE.replace("lr: 0.01, ", ""))


def test_unknown_dataset(tmp_path: Path) -> None:
    assert "data.name" in error_of(tmp_path, BASE.replace("{name: mnist}", "{name: mnits}"))


def test_group_aliases(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE.replace("[filters, channels]", "[neurons, columns]")))
    assert config.regularization.rules[0].groups == (GroupName.FILTERS, GroupName.CHANNELS)


def test_yaml_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-3 as a string; float fields accept it anyway
    config = load_config(write(tmp_path, BASE.replace("1.0e-3", "1e-3")))
    assert config.regularization.rules[0].penalty.strength == pytest.approx(1e-3)


def test_overrides_apply_with_yaml_typing(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path),
        [
            "train.lr=0.05",
            "train.nesterov=true",
            "data.limit_train=300",
            "regularization.rules[0].penalty.strength=2e-3",
            "regularization.rules.0.groups=[shapes]",
            "train.lr_schedule=cosine",
            "report.latency_batch_sizes=[1, 8]",
            "finetune.epochs=3",
        ],
    )
    assert config.train.lr == 0.05 and config.train.nesterov is True
    assert config.data.limit_train == 300
    assert config.regularization.rules[0].penalty.strength == 2e-3
    assert config.regularization.rules[0].groups == (GroupName.SHAPES,)
    assert isinstance(config.train.lr_schedule, CosineSchedule)
    assert config.report.latency_batch_sizes == (1, 8)
    assert config.finetune.epochs == 3


def test_override_into_tagged_shorthand(tmp_path: Path) -> None:
    config = load_config(write(tmp_path), ["train.lr_schedule=step", "train.lr_schedule.step_size=4"])
    assert config.train.lr_schedule == StepSchedule(step_size=4)


def test_override_errors_name_the_override(tmp_path: Path) -> None:
    message = error_of(tmp_path, overrides=("train.lrr=0.1",))
    assert "--set train.lrr=0.1" in message and "did you mean 'train.lr'" in message
    message = error_of(tmp_path, overrides=("train.lr=-1",))
    assert "--set train.lr=-1" in message and "train.lr" in message
    assert "index out of range" in error_of(tmp_path, overrides=("regularization.rules[3].every=2",))
    assert "KEY=VALUE" in error_of(tmp_path, overrides=("train.lr",))


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    assert "invalid YAML at line" in error_of(tmp_path, "name: [unclosed\n")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_to_dict_round_trips(tmp_path: Path) -> None:
    config = load_config(write(tmp_path), ["train.lr_schedule=step", "train.lr_schedule.step_size=4"])
    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    assert parse_config(text, "resolved.yaml") == config


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    config = load_config(path)
    assert config.name == path.stem or path.stem == "demo"


def test_packaged_demo_matches_configs_copy() -> None:
    packaged = REPO / "src" / "shrinkage" / "config" / "demo.yaml"
    assert packaged.read_text() == (REPO / "configs" / "demo.yaml").read_text()
