"""Integration fixtures: the prepared target database and a running pgwarden in front of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.postgres import PostgresServer


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
