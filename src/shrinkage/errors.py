"""Exceptions raised by shrinkage.

Every error the library raises on bad input is a ``ShrinkageError`` whose message is
one line naming the offending key, file, module or step, so the CLI can print it as is.
"""


class ShrinkageError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class ConfigError(ShrinkageError, ValueError):
    """A configuration key is unknown, mistyped or out of range."""


class DataError(ShrinkageError, OSError):
    """A data file is missing, truncated or does not match its checksum."""


class UnsupportedModuleError(ShrinkageError, TypeError):
    """A module or graph operation has no rule for the requested transformation."""


class TrainingError(ShrinkageError, RuntimeError):
    """Training cannot continue (for example, the loss became NaN)."""


class ExampleInputError(ShrinkageError, ValueError):
    """The example inputs do not fit the model (a wrong shape or dtype); names the graph node."""
