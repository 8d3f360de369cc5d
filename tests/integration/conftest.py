"""Integration fixtures: the prepared target database and a running pgwarden in front of it,
its state in SQLite or, for modules marked `BOTH_STORES`, in PostgreSQL as well
(tests/fixtures/state_backends.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.clock import FakeClock
from tests.fixtures.pg_state import PgState, state_database
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.served import mounted_tiny_disk
from tests.fixtures.state_backends import fresh_state_store, state_backend, state_store

__all__ = ["fresh_state_store", "state_backend", "state_database", "state_store"]


@pytest.fixture(scope="module")
def pgwarden(
    deployment: PgwardenDeployment,
    tmp_path_factory: pytest.TempPathFactory,
    state_store: PgState | None,
) -> Iterator[RunningPgwarden]:
    """pgwarden with the default test policy, shared by the tests of one module."""
    directory: Path = tmp_path_factory.mktemp("pgwarden")
    with running_pgwarden(deployment.write_files(directory, state=state_store)) as instance:
        yield instance


@pytest.fixture(scope="module")
def clock(state_backend: str) -> FakeClock:
    """The fake clock a module's `warden` runs on: tests move time with `clock.advance(...)`.
    A new one for each store a module runs on, as its `warden` is."""
    return FakeClock()


@pytest.fixture(scope="module")
def warden(
    deployment: PgwardenDeployment,
    clock: FakeClock,
    tmp_path_factory: pytest.TempPathFactory,
    state_store: PgState | None,
) -> Iterator[RunningPgwarden]:
    """pgwarden on the module's fake clock, shared by the tests of one module."""
    config = deployment.write_files(tmp_path_factory.mktemp("clocked"), state=state_store)
    with running_pgwarden(config, clock=clock) as instance:
        yield instance


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, for disk-full tests (skipped, saying why, where mounting is not allowed)."""
    yield from mounted_tiny_disk(tmp_path)
