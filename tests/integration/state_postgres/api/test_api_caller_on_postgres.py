"""tests/unit/api/test_api_caller.py, on a PostgreSQL state store (conftest.py)."""

from tests.unit.api.test_api_caller import *  # noqa: F403
