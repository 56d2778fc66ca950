"""The one exception type for bad data input (docs/design.md §5.10).

A `DataError` message is complete on its own: it names the file and line (or the column, or the
`data.*` key) and says what to do. Entry scripts print it without a traceback and exit non-zero.
"""


class DataError(Exception):
    """Bad user input to the data pipeline; the message is meant for the user, not a developer."""
