"""Integration fixtures: the prepared target database and a running pgwarden in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.clock import FakeClock
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.served import mounted_tiny_disk


@pytest.fixture(scope="session")
def deployment(postgres: PostgresServer) -> PgwardenDeployment:
    """The target database `orders` with its read-only and read-write roles."""
    prepared = PgwardenDeployment(postgres)
    prepared.prepare()
    return prepared


@pytest.fixture(scope="module")
def pgwarden(
    deployment: PgwardenDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPgwarden]:
    """pgwarden with the default test policy, shared by the tests of one module."""
    directory: Path = tmp_path_factory.mktemp("pgwarden")
    with running_pgwarden(deployment.write_files(directory)) as instance:
        yield instance


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    """The fake clock a module's `warden` runs on: tests move time with `clock.advance(...)`."""
    return FakeClock()


@pytest.fixture(scope="module")
def warden(
    deployment: PgwardenDeployment, clock: FakeClock, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPgwarden]:
    """pgwarden on the module's fake clock, shared by the tests of one module."""
    with running_pgwarden(
        deployment.write_files(tmp_path_factory.mktemp("clocked")), clock=clock
    ) as instance:
        yield instance


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, for disk-full tests (skipped, saying why, where mounting is not allowed)."""
    yield from mounted_tiny_disk(tmp_path)
