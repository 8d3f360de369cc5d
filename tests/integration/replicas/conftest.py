"""Fixtures of the replica tests: the state store's own PostgreSQL, and three replicas on it.

`state_cluster` (one per run) is a throwaway PostgreSQL for the state store alone
(tests/fixtures/state_cluster.py): the tests stop and restart it while the harness server, the
upstream, keeps running. `replicas` (one set per module, on a schema of its own) are three
`pgwarden serve` processes on it (tests/fixtures/replicas.py). A test that stopped the state
database finds it started again by the next one (`state_up`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.pg_state import new_schema_name
from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.postgres import PostgresUnavailable
from tests.fixtures.replicas import Replicas, running_replicas
from tests.fixtures.state_cluster import StateCluster
from tests.fixtures.state_cluster import state_cluster as start_state_cluster


@pytest.fixture(scope="session")
def state_cluster() -> Iterator[StateCluster]:
    try:
        with start_state_cluster() as cluster:
            yield cluster
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def state_up(state_cluster: StateCluster) -> Iterator[StateCluster]:
    """The state cluster, running again after the test whatever the test did to it."""
    state_cluster.ensure_running()
    yield state_cluster
    state_cluster.ensure_running()


@pytest.fixture(scope="module")
def replicas(
    deployment: PgwardenDeployment,
    state_cluster: StateCluster,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Replicas]:
    """Three replicas (a, b, c) on a schema of this module's own."""
    module = request.module.__name__.rpartition(".")[2]
    staleness = getattr(request.module, "MAX_STALENESS", None)
    with running_replicas(
        deployment, state_cluster, tmp_path_factory.mktemp(f"replicas-{module}"),
        new_schema_name(module), max_staleness=staleness,
    ) as started:  # fmt: skip
        yield started


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = __file__.rpartition("/")[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.integration)
