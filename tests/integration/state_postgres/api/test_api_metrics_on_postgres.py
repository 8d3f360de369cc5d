"""tests/unit/api/test_api_metrics.py, on a PostgreSQL state store (conftest.py)."""

from tests.unit.api.test_api_metrics import *  # noqa: F403
