"""tests/unit/grants/test_lifecycle.py, on a PostgreSQL state store (conftest.py)."""

from tests.unit.grants.test_lifecycle import *  # noqa: F403
