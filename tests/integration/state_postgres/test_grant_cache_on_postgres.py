"""tests/unit/grants/test_grant_cache.py, on a PostgreSQL state store (conftest.py)."""

from tests.unit.grants.test_grant_cache import *  # noqa: F403
