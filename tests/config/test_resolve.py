"""Config names resolve once into typed rules that bind to the intended modules."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from shrinkage.config import (
    GroupLassoConfig,
    GroupName,
    NuclearNormConfig,
    RegularizationConfig,
    RuleConfig,
    SelectConfig,
    resolve_rules,
)
from shrinkage.groups import Channels, Filters, Matrix
from shrinkage.penalties import GroupLasso, NuclearNorm


def model() -> nn.Module:
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 4, 3), conv2=nn.Conv2d(4, 4, 3), flatten=nn.Flatten(),
        fc1=nn.Linear(4, 4), fc2=nn.Linear(4, 2),
    ))


def chosen(rule_config: RuleConfig) -> list[list[str]]:
    rules = resolve_rules(RegularizationConfig(rules=(rule_config,)))
    return [[name for name, _ in rule.chosen(model())] for rule in rules]


def test_one_rule_per_group_kind_with_typed_objects() -> None:
    rule = RuleConfig(SelectConfig(types=("Conv2d",)), (GroupName.FILTERS, GroupName.CHANNELS), GroupLassoConfig(0.1))
    rules = resolve_rules(RegularizationConfig(rules=(rule,)))
    assert [type(r.groups) for r in rules] == [Filters, Channels]
    assert all(r.penalty == GroupLasso(0.1) for r in rules)
    assert chosen(rule) == [["conv1", "conv2"], ["conv1", "conv2"]]


def test_types_and_names_must_both_match_and_exclude_removes() -> None:
    both = RuleConfig(SelectConfig(types=("Linear",), names=("fc*", "conv1")), (GroupName.MATRIX,),
                      NuclearNormConfig(0.1), exclude=("fc2",))
    assert chosen(both) == [["fc1"]]
    rules = resolve_rules(RegularizationConfig(rules=(both,)))
    assert isinstance(rules[0].groups, Matrix) and rules[0].penalty == NuclearNorm(0.1)


def test_name_globs_alone() -> None:
    rule = RuleConfig(SelectConfig(names=("conv*", "fc2")), (GroupName.FILTERS,), GroupLassoConfig(0.1))
    assert chosen(rule) == [["conv1", "conv2", "fc2"]]
