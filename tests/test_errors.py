"""rwkv/errors.py: the one module of user-facing errors (docs/design.md §5.10)."""

import importlib.util

import rwkv.data
from rwkv.errors import ConfigError, DataError, user_error_types


def test_one_module_holds_the_user_errors():
    assert rwkv.data.DataError is DataError  # the data package re-exports it, no second class
    assert importlib.util.find_spec("rwkv.data.errors") is None
    assert {ConfigError, DataError} <= set(user_error_types())
