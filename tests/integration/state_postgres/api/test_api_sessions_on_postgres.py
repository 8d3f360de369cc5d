"""tests/unit/api/test_api_sessions.py, on a PostgreSQL state store (conftest.py)."""

from tests.unit.api.test_api_sessions import *  # noqa: F403
