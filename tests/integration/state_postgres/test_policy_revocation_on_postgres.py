"""tests/unit/grants/test_policy_revocation.py, on a PostgreSQL state store (conftest.py)."""

from tests.unit.grants.test_policy_revocation import *  # noqa: F403
