"""application_name: pgwarden's identity prefix for the DBA, the client's own name for the client.

With `proxy.identity_in_application_name` on (the default) pg_stat_activity shows
`pgwarden:<user>:<grant> <client's name>`; off, the client's name reaches the database untouched.
Either way the ParameterStatus the client gets at login reports its own name. With the upstream
pool on, the same holds for a reused backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.clients import superuser_orders
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.integration

MODES = {
    "identity on": {"identity_in_application_name": True},
    "identity off": {"identity_in_application_name": False},
    "identity on, pooled": {"identity_in_application_name": True, "upstream_pool": True},
}


@pytest.fixture(scope="module", params=MODES.values(), ids=MODES.keys())
def mode(
    request: pytest.FixtureRequest,
    deployment: PgwardenDeployment,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningPgwarden, bool]]:
    settings: dict[str, bool] = request.param
    directory: Path = tmp_path_factory.mktemp("appname")
    with running_pgwarden(deployment.write_files(directory, **settings)) as instance:
        yield instance, settings["identity_in_application_name"]


def seen_by_the_dba(postgres: PostgresServer, pid: int) -> str:
    with superuser_orders(postgres) as su:
        row = su.execute(
            "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("client_name", ["reports-job", ""])
def test_application_name_upstream_and_as_the_client_is_told(
    mode: tuple[RunningPgwarden, bool], postgres: PostgresServer, client_name: str
) -> None:
    warden, identity = mode
    credential = warden.grant()
    for _ in range(2):  # with the pool, the second session runs in a reused backend
        dsn = warden.dsn(credential, application_name=client_name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.info.parameter_status("application_name") == client_name
            upstream = seen_by_the_dba(postgres, conn.info.backend_pid)
            shown = conn.execute("SHOW application_name").fetchone()
        if identity:
            prefix = f"pgwarden:{credential.username}:{credential.request_id}"
            assert upstream == (f"{prefix} {client_name}" if client_name else prefix)
        else:
            assert upstream == client_name
        assert shown == (upstream,)  # SHOW asks the database (README, "Security")
