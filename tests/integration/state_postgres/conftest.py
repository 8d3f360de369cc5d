"""The state store's and the lifecycle's tests, run again on a PostgreSQL state store.

The `*_on_postgres.py` modules import tests/unit/grants' tests (the unit tier needs no server, so
they run again here, where the harness PostgreSQL is). This folder's `store_factory` opens
`PostgresStore`s on a schema of that server (tests/fixtures/pg_state.py) instead of SQLite files,
so the `store` and `service` those tests take are PostgreSQL's. Each test has a clock of its own,
as in the unit tier (tests/integration's `clock` is a module's).
"""

from __future__ import annotations

import pytest

from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import StoreFactory, policy, service, store
from tests.fixtures.pg_state import PgState, fresh_schema, module_schema, pg_state, state_database

__all__ = [
    "fresh_schema", "module_schema", "pg_state", "policy", "service", "state_database", "store",
]  # fmt: skip


@pytest.fixture
def store_factory(pg_state: PgState) -> StoreFactory:
    return pg_state.open


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = __file__.rpartition("/")[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.integration)
