"""Runs you can trust: bad input fails early with one line naming the key, value or file.

Duplicate YAML keys, out-of-range values, latency batches that do not fit, unwritable
output paths, reruns of a finished run with other settings, corrupted checkpoints and
temporary files left by a killed write.
"""

from __future__ import annotations

import textwrap

import pytest

from shrinkage.config import parse_config
from shrinkage.config.loader import load_yaml
from shrinkage.errors import ConfigError

BASE = textwrap.dedent(
    """\
    name: t
    model: {name: lenet}
    train:
      lr: 0.01
      epochs: 2
    regularization:
      rules:
        - select: {types: [Conv2d]}
          groups: [filters]
          penalty: {kind: group_lasso, strength: 1.0e-3}
    """
)


def config_error(text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "run.yaml", overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- 1. duplicate YAML keys ------------------------------------------------------------


def test_duplicate_key_names_file_line_and_dotted_key() -> None:
    text = BASE.replace("epochs: 2\n", "epochs: 2\n  lr: 0.5\n")
    assert config_error(text) == "run.yaml: line 6: duplicate key 'train.lr'"


def test_duplicate_top_level_section() -> None:
    message = config_error(BASE + "train: {lr: 0.1, epochs: 1}\n")
    assert message == "run.yaml: line 11: duplicate key 'train'"


def test_duplicate_key_inside_a_list_of_rules() -> None:
    text = BASE.replace("strength: 1.0e-3}", "strength: 1.0e-3, strength: 2.0e-3}")
    assert config_error(text) == "run.yaml: line 10: duplicate key 'regularization.rules[0].penalty.strength'"


def test_duplicate_key_in_an_override_value() -> None:
    message = config_error(BASE, ("train.lr_schedule={kind: step, kind: cosine}",))
    assert "--set train.lr_schedule=" in message and "duplicate key 'train.lr_schedule.kind'" in message


def test_merge_keys_may_override_and_sibling_mappings_may_share_keys() -> None:
    text = "base: &b {lr: 0.1, epochs: 2}\ntrain:\n  <<: *b\n  epochs: 3\nfinetune: {epochs: 1, lr: 0.2}\n"
    assert load_yaml(text) == {"base": {"lr": 0.1, "epochs": 2}, "train": {"lr": 0.1, "epochs": 3},
                               "finetune": {"epochs": 1, "lr": 0.2}}


# --- 2. value ranges ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.seed=18446744073709551616", "train.seed: must be an integer in [0, 9223372036854775807], "
                                            "got 18446744073709551616"),
        ("train.seed=-1", "train.seed: must be an integer in [0, 9223372036854775807], got -1"),
        ("train.epochs=1000000000000", "train.epochs: must be an integer in [0, 100000], got 1000000000000"),
        ("finetune.epochs=1000000", "finetune.epochs: must be an integer in [0, 100000], got 1000000"),
        ("train.lr_schedule={kind: step, step_size: 1000000}",
         "train.lr_schedule.step_size: must be an integer in [1, 100000], got 1000000"),
        ("data.batch_size=2000000", "data.batch_size: must be an integer in [1, 1048576], got 2000000"),
        ("data.test_batch_size=2000000", "data.test_batch_size: must be an integer in [1, 1048576], got 2000000"),
        ("report.latency_batch_sizes=[1, 100000]",
         "report.latency_batch_sizes: must be an integer in [1, 65536], got 100000"),
        ("report.repeats=100000", "report.repeats: must be an integer in [1, 10000], got 100000"),
    ],
)
def test_out_of_range_values_name_key_value_and_bound(override: str, expected: str) -> None:
    assert config_error(BASE, (override,)) == f"--set {override}: {expected}"


def test_largest_seed_is_accepted_and_usable() -> None:
    import torch

    from shrinkage.train import seed_everything

    config = parse_config(BASE, "run.yaml", ("train.seed=9223372036854775807",))
    seed_everything(config.train.seed)
    torch.Generator().manual_seed(config.train.seed)
