"""The exception family of the property emulator.

Every error raised by ``galaxy_assets.emulator`` derives from :class:`EmulatorError`; the
subclasses say which kind of fix is needed. Messages name what was wrong, where (the table,
column or config file) and what to do.
"""

from __future__ import annotations


class EmulatorError(Exception):
    """Base class for every error raised by ``galaxy_assets.emulator``."""


class EmulatorDataError(EmulatorError, ValueError):
    """A table or frame cannot be used: a column with no value at all, a constant column,
    infinities, a non-numeric column, a table with no usable row."""


class EmulatorConfigError(EmulatorError, ValueError):
    """A setting or config file is wrong: unknown column names, a bad schedule name, sizes
    that do not fit together, a YAML file that is not a column-role mapping."""


class UnknownLabelError(EmulatorError, ValueError):
    """A posterior was requested for a column the model never learned to predict."""


class TrainingDivergedError(EmulatorError, RuntimeError):
    """Training produced a non-finite loss or gradient; no model is returned, so none can be
    registered. Lower the learning rate, check the table for extreme values, or train again
    with another seed."""
