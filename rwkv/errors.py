"""User-facing errors, all in this one module: a message that names the file, key or value and says what
to do (docs/design.md §5.10).

Entry scripts print these without a traceback and exit with status 2; anything else is a bug and keeps
its traceback.
"""


class ConfigError(ValueError):
    """A config value that cannot work (names the `section.key`)."""


class DataError(Exception):
    """Bad user input to the data pipeline; the message is meant for the user, not a developer.

    It is complete on its own: it names the file and line (or the column, or the `data.*` key) and says
    what to do.
    """


def user_error_types() -> tuple[type[BaseException], ...]:
    from .checkpoint.official_pth import CheckpointMismatch
    from .checkpoint.training_checkpoint import ExportError

    return (ConfigError, DataError, CheckpointMismatch, ExportError, FileNotFoundError)
