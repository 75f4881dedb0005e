"""A run with ``target.macs`` and proximal penalties trains under the budget controller;
the threshold policy of the config reaches the proximal optimizer."""

from __future__ import annotations

import dataclasses

from shrinkage.config import Mode, PenalizedGroups, TargetConfig
from shrinkage.train import Trainer

from train.helpers import tiny_config, tiny_data, tiny_model


def test_target_macs_attaches_a_controller_and_logs_its_estimate(tmp_path) -> None:
    config = dataclasses.replace(tiny_config(epochs=3, finetune=0), target=TargetConfig(macs=0.5))
    trainer = Trainer(config, tiny_model(), tiny_data(96, 1), tiny_data(60, 2), tmp_path)
    assert trainer.controller is not None and trainer.regularizer.controller is trainer.controller
    rows = trainer.fit().rows
    assert all("estimated_macs" in row for row in rows)
    assert 0.0 <= rows[-1]["estimated_macs"] <= 1.0


def test_target_penalize_weakest_trains_with_focus_and_logs_the_penalized_share(tmp_path) -> None:
    target = TargetConfig(macs=0.5, penalize=PenalizedGroups.WEAKEST)
    trainer = Trainer(dataclasses.replace(tiny_config(epochs=3, finetune=0), target=target),
                      tiny_model(), tiny_data(96, 1), tiny_data(60, 2), tmp_path)  # fmt: skip
    assert trainer.controller is not None and trainer.controller.focus is not None
    rows = trainer.fit().rows
    assert all(0.0 < row["penalized_groups"] < 1.0 for row in rows)  # the warm-up ends in epoch 1
    assert trainer.regularizer is not None and trainer.regularizer.group_weights


def test_no_controller_without_a_mac_target_or_in_subgradient_mode(tmp_path) -> None:
    plain = Trainer(tiny_config(), tiny_model(), tiny_data(96, 1), tiny_data(60, 2), tmp_path / "a")
    assert plain.controller is None
    config = dataclasses.replace(tiny_config(Mode.SUBGRADIENT), target=TargetConfig(macs=0.5))
    assert Trainer(config, tiny_model(), tiny_data(96, 1), tiny_data(60, 2), tmp_path / "b").controller is None
    params_only = dataclasses.replace(tiny_config(), target=TargetConfig(params=0.5))
    assert Trainer(params_only, tiny_model(), tiny_data(96, 1), tiny_data(60, 2), tmp_path / "c").controller is None


def test_threshold_policy_comes_from_the_config(tmp_path) -> None:
    base = tiny_config(epochs=1, finetune=0)
    reg = dataclasses.replace(base.regularization, min_lr_fraction=0.1, truncate_at_end=True)
    trainer = Trainer(dataclasses.replace(base, regularization=reg), tiny_model(), tiny_data(32, 1), tiny_data(20, 2), tmp_path)
    runtime = trainer.phases[0].start(False)
    assert runtime.optimizer.threshold.min_lr_fraction == 0.1 and runtime.optimizer.threshold.truncate_at_end
