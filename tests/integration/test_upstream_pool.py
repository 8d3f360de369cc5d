"""The upstream pool (`upstream_pool: {enabled: true}`) against a real Postgres.

A backend is reused only after a clean exit (the client's Terminate with the backend idle), and
the next session — another person's — finds none of the previous session's state: settings,
temporary tables, prepared statements, cursors, advisory locks, LISTEN, custom settings. It gets
its own application_name and client settings. Backends left in a transaction, ended by expiry,
or sent a cancel are never reused; idle ones are ended after `idle_timeout`; a policy reload
drops them. pgwarden runs on a fake clock shared with the test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import psycopg
import pytest

from proxy.grants.requests import IssuedCredential
from tests.fixtures.clients import wait_until
from tests.fixtures.clock import FakeClock
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.integration

BOUND = 5.0  # seconds for what happens in the background (a backend exiting)


@pytest.fixture(scope="module")
def pool_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def pooled(
    deployment: PgwardenDeployment,
    pool_clock: FakeClock,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningPgwarden]:
    directory = tmp_path_factory.mktemp("pooled")
    config = deployment.write_files(directory, upstream_pool=True)
    with running_pgwarden(config, clock=pool_clock) as instance:
        yield instance


@pytest.fixture
def grant(pooled: RunningPgwarden, pool_clock: FakeClock) -> Callable[..., IssuedCredential]:
    """A fresh grant. The clock moves first: with two active grants of one user, the login takes
    the newest credential, and credentials issued at the same instant tie."""

    def issue(user: str, duration: timedelta = timedelta(hours=1)) -> IssuedCredential:
        pool_clock.advance(timedelta(seconds=1))
        return pooled.grant(user, "read-write", duration=duration)

    return issue


def connect(
    warden: RunningPgwarden, credential: IssuedCredential, **extra: str
) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(warden.dsn(credential, **extra), autocommit=True)


def one(conn: psycopg.Connection[tuple[object, ...]], query: str) -> object:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def pid_of(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    pid = one(conn, "SELECT pg_backend_pid()")
    assert isinstance(pid, int)
    return pid


def backend_pid(warden: RunningPgwarden, credential: IssuedCredential) -> int:
    with connect(warden, credential) as conn:
        return pid_of(conn)


def first_error(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    """Run queries until one fails; what the client was told."""
    start = time.monotonic()
    while time.monotonic() - start < BOUND:
        try:
            conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:
            return str(exc)
        time.sleep(0.02)
    raise AssertionError(f"the session still works after {BOUND} s")


def backend_alive(postgres: PostgresServer, pid: int) -> bool:
    with postgres.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        result = row.fetchone()
    return bool(result and result[0])


def test_next_session_reuses_the_backend_with_nothing_left_of_the_last(
    pooled: RunningPgwarden,
    grant: Callable[..., IssuedCredential],
) -> None:
    alice = grant("alice")
    with connect(pooled, alice) as conn:
        first = pid_of(conn)
        for statement in (
            "SET work_mem = '77MB'",
            "CREATE TEMP TABLE alice_scratch (x int)",
            "PREPARE alice_plan AS SELECT 1",
            "SELECT pg_advisory_lock(4242)",
            "LISTEN alice_channel",
            "SELECT set_config('myapp.secret', 'alice-was-here', false)",
            "BEGIN",
            "DECLARE alice_cursor CURSOR WITH HOLD FOR SELECT 1",
            "COMMIT",
        ):
            conn.execute(statement)
    bob = grant("bob")
    with connect(pooled, bob, application_name="bobapp", client_encoding="LATIN1") as conn:
        assert one(conn, "SELECT pg_backend_pid()") == first
        assert conn.info.backend_pid == first  # a reused backend's real pid, not a made-up one
        assert one(conn, "SHOW work_mem") != "77MB"
        assert one(conn, "SELECT to_regclass('pg_temp.alice_scratch')") is None
        assert one(conn, "SELECT count(*) FROM pg_prepared_statements") == 0
        assert one(conn, "SELECT count(*) FROM pg_cursors") == 0
        assert one(conn, "SELECT count(*) FROM pg_listening_channels()") == 0
        held = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert one(conn, held) == 0
        assert one(conn, "SELECT current_setting('myapp.secret', true)") in ("", None)
        assert one(conn, "SHOW application_name") == f"pgwarden:bob:{bob.request_id} bobapp"
        assert one(conn, "SHOW client_encoding") == "LATIN1"
        assert conn.info.parameter_status("client_encoding") == "LATIN1"
        # The client is told its own name; the identity prefix is for pg_stat_activity.
        assert conn.info.parameter_status("application_name") == "bobapp"
    registry = pooled.runtime.metrics_registry
    reuses = "pgwarden_upstream_pool_reuses_total"
    wait_until(lambda: (registry.get_sample_value(reuses) or 0) >= 1, BOUND, "the reuse counted")
    assert registry.get_sample_value("pgwarden_upstream_pool_idle") == 1


def test_client_settings_of_one_session_do_not_reach_the_next(
    pooled: RunningPgwarden, grant: Callable[..., IssuedCredential], monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = grant("alice")
    monkeypatch.setenv("PGDATESTYLE", "SQL, DMY")  # libpq sends it as a startup parameter
    with connect(pooled, alice) as conn:
        first = pid_of(conn)
        assert one(conn, "SHOW DateStyle") == "SQL, DMY"
    monkeypatch.delenv("PGDATESTYLE")
    with connect(pooled, alice) as conn:
        assert one(conn, "SELECT pg_backend_pid()") == first
        assert one(conn, "SHOW DateStyle") == "ISO, MDY"  # the server's default, not alice's


def test_a_backend_left_in_a_transaction_is_ended(
    pooled: RunningPgwarden, grant: Callable[..., IssuedCredential], postgres: PostgresServer
) -> None:
    alice = grant("alice")
    conn = connect(pooled, alice)
    first = pid_of(conn)
    conn.execute("BEGIN")
    conn.close()  # Terminate inside the transaction
    wait_until(lambda: not backend_alive(postgres, first), BOUND, "the backend gone")
    assert backend_pid(pooled, alice) != first


def test_a_backend_that_was_sent_a_cancel_is_never_reused(
    pooled: RunningPgwarden, grant: Callable[..., IssuedCredential], postgres: PostgresServer
) -> None:
    alice = grant("alice")
    with connect(pooled, alice) as conn:
        first = pid_of(conn)
        running = threading.Thread(target=cancel_when_sleeping, args=(conn, postgres, first))
        running.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        running.join()
    wait_until(lambda: not backend_alive(postgres, first), BOUND, "the backend gone")
    assert backend_pid(pooled, alice) != first


def cancel_when_sleeping(
    conn: psycopg.Connection[tuple[object, ...]], postgres: PostgresServer, pid: int
) -> None:
    def sleeping() -> bool:
        with postgres.connect() as su:
            row = su.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
            state = row.fetchone()
        return state is not None and state[0] == "active"

    wait_until(sleeping, BOUND, "the query running")
    conn.cancel_safe(timeout=BOUND)


def test_an_expired_session_s_backend_is_ended_not_kept(
    pooled: RunningPgwarden,
    grant: Callable[..., IssuedCredential],
    pool_clock: FakeClock,
    postgres: PostgresServer,
) -> None:
    alice = grant("alice", timedelta(minutes=5))
    conn = connect(pooled, alice)
    first = pid_of(conn)
    pool_clock.advance(timedelta(minutes=6))
    assert "expired" in first_error(conn)
    conn.close()
    wait_until(lambda: not backend_alive(postgres, first), BOUND, "the backend gone")
    later = grant("alice")
    assert backend_pid(pooled, later) != first


def test_idle_backends_are_ended_after_the_idle_timeout(
    pooled: RunningPgwarden,
    grant: Callable[..., IssuedCredential],
    pool_clock: FakeClock,
    postgres: PostgresServer,
) -> None:
    alice = grant("alice")
    kept = backend_pid(pooled, alice)
    assert backend_alive(postgres, kept)  # idle in the pool
    pool_clock.advance(timedelta(seconds=61))  # the housekeeping (each second) prunes it
    wait_until(lambda: not backend_alive(postgres, kept), BOUND, "the backend gone")
    assert backend_pid(pooled, alice) != kept


def test_an_invalid_client_setting_is_refused_with_the_database_s_reason(
    pooled: RunningPgwarden,
    grant: Callable[..., IssuedCredential],
) -> None:
    alice = grant("alice")
    with pytest.raises(psycopg.OperationalError, match="invalid value for parameter"):
        connect(pooled, alice, client_encoding="NO_SUCH_ENCODING")
    with connect(pooled, alice) as conn:  # the pool is still fine
        assert one(conn, "SELECT 1") == 1


def test_without_the_pool_every_session_gets_a_new_backend(pgwarden: RunningPgwarden) -> None:
    alice = pgwarden.grant("alice", "read-write")
    assert backend_pid(pgwarden, alice) != backend_pid(pgwarden, alice)
