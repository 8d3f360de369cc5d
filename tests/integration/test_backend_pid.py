"""The process id in BackendKeyData is the upstream backend's own.

A client's `conn.info.backend_pid` is what `pg_backend_pid()`, `pg_stat_activity` and a NOTIFY's
sender pid say, so `pg_terminate_backend(conn.info.backend_pid)` from another session ends the
client's session — told by the database's own FATAL, and ended cleanly in pgwarden (registry and
audit). The secret stays pgwarden's own: cancel tests live in test_proxy_clients.py and, across
worker processes, test_workers.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.adversary import live_sessions
from tests.fixtures.clients import superuser_orders, wait_until
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.integration

BOUND = 10.0


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backend-pid")


@pytest.fixture(scope="module")
def here(deployment: PgwardenDeployment, directory: Path) -> Iterator[RunningPgwarden]:
    with running_pgwarden(deployment.write_files(directory)) as instance:
        yield instance


def audit_records(directory: Path, kind: str) -> list[dict[str, object]]:
    lines = (directory / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_the_client_is_given_the_backend_s_real_pid(here: RunningPgwarden) -> None:
    with psycopg.connect(here.dsn(here.grant())) as conn:
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == (conn.info.backend_pid,)


def test_pg_terminate_backend_of_the_client_s_pid_ends_its_session(
    here: RunningPgwarden, postgres: PostgresServer, directory: Path
) -> None:
    conn = psycopg.connect(here.dsn(here.grant()), autocommit=True)
    try:
        pid = conn.info.backend_pid
        assert live_sessions(here) == 1
        with superuser_orders(postgres) as su:
            assert su.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        # The database's own FATAL reaches the client: "terminating connection due to
        # administrator command" (57P01), then the connection is gone.
        told = _first_error(conn)
        assert told.sqlstate == "57P01"
        assert "terminating connection due to administrator command" in str(told)
        assert conn.closed
    finally:
        conn.close()
    wait_until(lambda: live_sessions(here) == 0, BOUND, "the session to leave the registry")
    (started,) = [
        r for r in audit_records(directory, "session.started") if r["backend_process_id"] == pid
    ]
    wait_until(
        lambda: _ended(directory, started["session_id"]) is not None,
        BOUND, "the session's end to be audited",
    )  # fmt: skip
    ended = _ended(directory, started["session_id"])
    assert ended is not None
    assert ended["reason"] == "upstream_left"


def _first_error(conn: psycopg.Connection[tuple[object, ...]]) -> psycopg.Error:
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        try:
            conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return exc
        time.sleep(0.05)
    raise AssertionError(f"the session still works after {BOUND} s")


def _ended(directory: Path, session_id: object) -> dict[str, object] | None:
    found = [r for r in audit_records(directory, "session.ended") if r["session_id"] == session_id]
    return found[0] if found else None


def test_a_notification_s_pid_is_the_sender_s_backend_pid(here: RunningPgwarden) -> None:
    credential = here.grant()
    with (
        psycopg.connect(here.dsn(credential), autocommit=True) as listener,
        psycopg.connect(here.dsn(credential), autocommit=True) as notifier,
    ):
        listener.execute("LISTEN pgwarden_pid_channel")
        notifier.execute("NOTIFY pgwarden_pid_channel, 'hello'")
        seen = [(n.payload, n.pid) for n in listener.notifies(timeout=BOUND, stop_after=1)]
        assert seen == [("hello", notifier.info.backend_pid)]
        assert listener.info.backend_pid != notifier.info.backend_pid
