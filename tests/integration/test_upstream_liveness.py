"""Every session's backend checks that pgwarden is still there during a query: PostgreSQL holds
pgwarden's client_connection_check_interval and TCP keepalive settings, in place of any value the
client sent at startup, with the upstream pool (after a reuse's DISCARD ALL) as without it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.upstream.liveness import SESSION_SETTINGS
from tests.fixtures.clients import superuser_orders
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.integration

SHOW = "SELECT " + ", ".join(f"current_setting('{name}')" for name, _ in SESSION_SETTINGS)
# As PostgreSQL shows them: the keepalive values are read back from the backend's socket.
EXPECTED = ("1s", "10", "5", "3")
CLIENT_TRIES = "-c client_connection_check_interval=0 -c tcp_keepalives_idle=7200"


@pytest.fixture(scope="module", params=[False, True], ids=["new backend", "pooled"])
def warden(
    request: pytest.FixtureRequest,
    deployment: PgwardenDeployment,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningPgwarden]:
    directory: Path = tmp_path_factory.mktemp("liveness")
    with running_pgwarden(deployment.write_files(directory, upstream_pool=request.param)) as w:
        yield w


def test_the_session_backend_holds_pgwardens_settings(
    warden: RunningPgwarden, postgres: PostgresServer
) -> None:
    credential = warden.grant()
    for _ in range(2):  # pooled: the second session runs in the first one's backend, reset
        with psycopg.connect(warden.dsn(credential, options=CLIENT_TRIES), autocommit=True) as c:
            assert c.execute(SHOW).fetchone() == EXPECTED
            with superuser_orders(postgres) as su:  # the database's view of that backend
                row = su.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (c.info.backend_pid,)
                ).fetchone()
            assert row == (1,)


def test_reset_all_in_a_session_returns_to_pgwardens_values(warden: RunningPgwarden) -> None:
    # RESET returns a setting to its startup value: pgwarden's, not the server's default 0.
    with psycopg.connect(warden.dsn(warden.grant()), autocommit=True) as conn:
        conn.execute("SET client_connection_check_interval = 0")
        conn.execute("RESET ALL")
        assert conn.execute(SHOW).fetchone() == EXPECTED
