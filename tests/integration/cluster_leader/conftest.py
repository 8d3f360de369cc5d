"""Fixtures of the leader and outbox tests: stores on a schema of the harness PostgreSQL
(tests/fixtures/pg_state.py), the grant fixtures for the outbox tests run again there, and a
fake clock per test (tests/integration's `clock` is a module's)."""

from __future__ import annotations

import pytest

from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import StoreFactory, policy
from tests.fixtures.pg_state import PgState, module_schema, pg_state, state_database

__all__ = ["module_schema", "pg_state", "policy", "state_database"]


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
