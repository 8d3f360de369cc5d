"""tests/unit/api/test_api_requests.py, on a PostgreSQL state store (conftest.py)."""

from tests.unit.api.test_api_requests import *  # noqa: F403
