"""The project's own exceptions.

The command layer turns any :class:`QaEbmError` into one line on stderr and exit status 2;
anything else is an internal failure (exit status 1).
"""


class QaEbmError(Exception):
    """Base class: a usage or input problem the user can fix."""


class ConfigError(QaEbmError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


class DataError(QaEbmError):
    """An input data source is missing, unreadable or in the wrong schema."""


class OutputExistsError(QaEbmError):
    """An output directory exists and overwriting was not asked for."""


class CheckpointError(QaEbmError):
    """A saved artifact is missing, incomplete or from an incompatible run."""
