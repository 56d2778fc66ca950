"""User-facing errors: a message that names the file, key or value and says what to do (docs/design.md §5.10).

Entry scripts print these without a traceback and exit with status 2; anything else is a bug and keeps
its traceback.
"""


class ConfigError(ValueError):
    """A config value that cannot work (names the `section.key`)."""


def user_error_types() -> tuple[type[BaseException], ...]:
    from .checkpoint.export import ExportError
    from .data.errors import DataError
    from .model.io import CheckpointMismatch

    return (ConfigError, DataError, CheckpointMismatch, ExportError, FileNotFoundError)
