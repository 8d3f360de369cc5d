"""The API harness (tests/fixtures/api.py) on a PostgreSQL state store: tests/unit/api's and
tests/unit/commands' tests run again here, the `ApiHarness`'s store a `PostgresStore` on this
module's schema, emptied before each test (tests/fixtures/pg_state.py), with the same hooks
(the notification outbox) the SQLite file gets. Their policy is the API's cast, not the
lifecycle's the parent folder's `policy` gives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.api import ApiHarness, as_user, policy, receiver
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import PolicyBox
from tests.fixtures.pg_state import PgState

__all__ = ["as_user", "policy", "receiver"]


@pytest.fixture
def api(
    tmp_path: Path, policy: PolicyBox, clock: FakeClock, pg_state: PgState
) -> Iterator[ApiHarness]:
    harness = ApiHarness(tmp_path, policy, clock, open_store=pg_state.open)
    try:
        yield harness
    finally:
        harness.close()
