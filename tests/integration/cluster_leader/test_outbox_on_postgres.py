"""tests/unit/notify/test_outbox.py, on a PostgreSQL state store (conftest.py)."""

from tests.unit.notify.test_outbox import *  # noqa: F403
