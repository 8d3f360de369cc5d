"""tests/unit/grants/test_write_ahead_hooks.py, on a PostgreSQL state store (conftest.py)."""

from tests.unit.grants.test_write_ahead_hooks import *  # noqa: F403
