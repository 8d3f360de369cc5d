"""tests/unit/grants/test_lifecycle_create.py, on a PostgreSQL state store (conftest.py)."""

from tests.unit.grants.test_lifecycle_create import *  # noqa: F403
