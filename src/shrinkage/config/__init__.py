"""Run configuration: typed frozen dataclasses, the YAML loader, name resolution."""

from shrinkage.config.convert import to_dict
from shrinkage.config.loader import load_config, parse_config, parse_override, with_dataset_defaults
from shrinkage.config.regularization import (
    GroupLassoConfig,
    GroupName,
    L1Config,
    Mode,
    NuclearNormConfig,
    PenaltyConfig,
    RegularizationConfig,
    RuleConfig,
    SelectConfig,
    SparseGroupLassoConfig,
)
from shrinkage.config.resolve import GROUP_KINDS, resolve_rule, resolve_rules
from shrinkage.config.schema import (
    CompactConfig,
    ConstantSchedule,
    CosineSchedule,
    DataConfig,
    FinetuneConfig,
    ModelConfig,
    OptimConfig,
    ReportConfig,
    RunConfig,
    ScheduleConfig,
    StepSchedule,
)
from shrinkage.config.target import (
    PenalizedGroups,
    PruneImportance,
    SelectionMethod,
    TargetConfig,
    default_selection,
)

__all__ = [
    "GROUP_KINDS",
    "CompactConfig",
    "ConstantSchedule",
    "CosineSchedule",
    "DataConfig",
    "FinetuneConfig",
    "GroupLassoConfig",
    "GroupName",
    "L1Config",
    "Mode",
    "ModelConfig",
    "NuclearNormConfig",
    "OptimConfig",
    "PenaltyConfig",
    "RegularizationConfig",
    "ReportConfig",
    "RuleConfig",
    "RunConfig",
    "ScheduleConfig",
    "SelectConfig",
    "SelectionMethod",
    "SparseGroupLassoConfig",
    "StepSchedule",
    "TargetConfig",
    "PenalizedGroups",
    "PruneImportance",
    "default_selection",
    "load_config",
    "parse_config",
    "parse_override",
    "resolve_rule",
    "resolve_rules",
    "to_dict",
    "with_dataset_defaults",
]
