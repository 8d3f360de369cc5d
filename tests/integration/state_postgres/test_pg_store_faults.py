"""The PostgreSQL state store when the database fails it: unreachable, read-only, a COMMIT whose
answer is lost, connections the server closed; and two servers on one store.

Each failure is the typed `StateStoreUnavailable` naming the database (never its password), the
one the API already maps to 503. The database is made unreachable by refusing connections to it
(`ALLOW_CONNECTIONS false`) and ending its sessions, read-only by its default, both in a database
of this module's own; nothing here sleeps for a failure to happen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from proxy.api.errors import translate
from proxy.grants.lifecycle import GrantService
from proxy.grants.pg_store import PostgresStore
from proxy.grants.requests import RequestState
from proxy.grants.store import RequestQuery
from proxy.grants.store_watch import Problem, StateStoreUnavailable, StoreError
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import BOB, PolicyBox, request_in_state
from tests.fixtures.pg_state import PgState
from tests.fixtures.postgres import PostgresServer, free_loopback_port
from tests.integration.state_postgres.test_store_on_postgres import run_all
from tests.unit.grants.test_store import a_request
from tests.unit.grants.test_write_ahead_hooks import Hooks

FAULTS_DATABASE = "pgwarden_state_faults"
UNREACHABLE = "cannot be reached; approvals, credentials and logins are refused until it answers"


@pytest.fixture(scope="module")
def faults_database(state_database: PostgresServer) -> Iterator[PostgresServer]:
    with state_database.connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {FAULTS_DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {FAULTS_DATABASE}")
    yield state_database
    with state_database.connect() as conn:
        conn.execute(f"DROP DATABASE {FAULTS_DATABASE} WITH (FORCE)")


@pytest.fixture
def store(faults_database: PostgresServer) -> Iterator[PostgresStore]:
    with psycopg.connect(faults_database.dsn(dbname=FAULTS_DATABASE), autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS pgwarden CASCADE")  # each test from an empty store
    opened = PostgresStore(faults_database.dsn(dbname=FAULTS_DATABASE), pool_timeout=1.0)
    yield opened
    opened.close()
    admin(faults_database, "ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true",
          "ALTER DATABASE {db} RESET default_transaction_read_only")  # fmt: skip


def admin(server: PostgresServer, *statements: str) -> None:
    """As the superuser, on the test database: `{db}` is the faults database."""
    with server.connect() as conn:
        for statement in statements:
            conn.execute(statement.format(db=FAULTS_DATABASE))  # type: ignore[arg-type]


def end_its_sessions(server: PostgresServer) -> None:
    """End every session on the faults database, and wait until they are gone (a terminated
    backend ends a moment after it is told to; bounded: 10 s)."""
    admin(server, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
          " AND pid <> pg_backend_pid()")  # fmt: skip
    with server.connect() as conn:
        for _ in range(1000):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (FAULTS_DATABASE,)
            ).fetchone()
            if row == (0,):
                return
            time.sleep(0.01)
    raise AssertionError(f"sessions on {FAULTS_DATABASE} outlived pg_terminate_backend")


def requests_asked(store: PostgresStore) -> int:
    """Connections asked of the store's pool so far: whether an operation even tried."""
    return int(store._pool.get_stats().get("requests_num", 0))


def test_a_database_unreachable_at_start_is_named_without_the_password() -> None:
    port = free_loopback_port()
    dsn = f"host=127.0.0.1 port={port} user=warden password=sekrit dbname=state connect_timeout=2"
    with pytest.raises(StoreError) as caught:
        PostgresStore(dsn)
    message = str(caught.value)
    assert message.startswith(
        f"cannot open the state store postgresql://127.0.0.1:{port}/state (schema pgwarden): "
    )
    assert "sekrit" not in message
    assert "warden" not in message.replace("pgwarden", "")


def test_an_unreachable_database_is_refused_at_once_then_found_again(
    store: PostgresStore, faults_database: PostgresServer
) -> None:
    assert store.changes() == 0
    admin(faults_database, "ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false")
    end_its_sessions(faults_database)

    with pytest.raises(StateStoreUnavailable) as caught:
        store.changes()
    error = caught.value
    assert (error.problem, str(error)) == (Problem.UNREACHABLE, f"the state store {store.where} "
                                           f"{UNREACHABLE}")  # fmt: skip
    api = translate(error)
    assert api is not None
    assert (api.status, api.code, api.message) == (503, "unavailable", str(error))
    asked = requests_asked(store)
    with pytest.raises(StateStoreUnavailable, match="cannot be reached"), store.write():
        pass
    with pytest.raises(StateStoreUnavailable, match="cannot be reached"), store.read():
        pass
    assert requests_asked(store) == asked  # refused without waiting on the database
    assert store.errors() == {Problem.UNREACHABLE: 1}
    assert store.problem() is not None
    assert store.check() is not None  # housekeeping's look: still gone

    admin(faults_database, "ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true")
    assert store.check() is None  # found again: every operation goes through
    with store.write() as tx:
        tx.insert_request(a_request())
    assert store.changes() == 1


def test_a_read_only_database_refuses_writes_not_reads_until_it_can_write(
    store: PostgresStore, faults_database: PostgresServer
) -> None:
    with store.write() as tx:
        tx.insert_request(a_request("r1"))
    admin(faults_database, "ALTER DATABASE {db} SET default_transaction_read_only = on")
    end_its_sessions(faults_database)  # a failover to a standby looks the same to a client

    with pytest.raises(StateStoreUnavailable) as caught, store.write() as tx:
        tx.insert_request(a_request("r2"))
    assert (caught.value.problem, caught.value.writing) == (Problem.READ_ONLY, True)
    assert str(caught.value) == (
        f"the state store {store.where} cannot be written (read-only); approvals and "
        "credentials are refused until it can"
    )
    with store.read() as tx:  # logins only read
        assert [r.id for r in tx.list_requests(RequestQuery(everything=True))] == ["r1"]
    assert store.problem() is not None  # a read proves nothing of writes

    admin(faults_database, "ALTER DATABASE {db} RESET default_transaction_read_only")
    assert store.check() is None  # its small write lands, on a new connection
    assert store.errors() == {Problem.READ_ONLY: 1}


def test_connections_the_server_ended_are_replaced_without_an_error(
    store: PostgresStore, faults_database: PostgresServer
) -> None:
    barrier = threading.Barrier(3)

    def read_together() -> None:
        with store.read():
            barrier.wait(timeout=10)  # three transactions at once: three connections

    run_all([read_together] * 3)
    assert store._pool.get_stats()["pool_size"] >= 3
    end_its_sessions(faults_database)  # a server restart does this to every one of them
    for _ in range(5):
        assert store.changes() == 0
    assert (store.problem(), store.errors()) == (None, {})


# --- a COMMIT whose answer is lost ------------------------------------------------------------


def lose_the_answer(commit_first: bool):  # type: ignore[no-untyped-def]
    def send(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        if commit_first:
            conn.execute("COMMIT")
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    return send


def test_a_commit_whose_answer_is_lost_but_took_effect_is_reported_committed(
    pg_state: PgState, clock: FakeClock, policy: PolicyBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = Hooks()
    store = pg_state.open(before_commit=hooks.before_commit, on_commit=hooks.on_commit,
                          on_abort=hooks.on_abort)  # fmt: skip
    service = GrantService(store, clock, policy)
    monkeypatch.setattr(store, "_send_commit", lose_the_answer(commit_first=True))
    request = service.create_request(BOB, a_request().target, a_request().access_level,
                                     a_request().duration, "reason")  # fmt: skip
    assert hooks.committed == hooks.before
    assert hooks.aborted == []
    with store.read() as tx:
        assert tx.get_request(request.id) == request


def test_a_commit_whose_outcome_cannot_be_known_is_neither_committed_nor_aborted(
    pg_state: PgState, clock: FakeClock, policy: PolicyBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = Hooks()
    store = pg_state.open(before_commit=hooks.before_commit, on_commit=hooks.on_commit,
                          on_abort=hooks.on_abort)  # fmt: skip
    service = GrantService(store, clock, policy)
    monkeypatch.setattr(store, "_send_commit", lose_the_answer(commit_first=False))
    monkeypatch.setattr(store, "_outcome", lambda xid: None)  # nobody answers the question
    with pytest.raises(StateStoreUnavailable, match="cannot be reached"):
        service.create_request(BOB, a_request().target, a_request().access_level,
                               a_request().duration, "reason")  # fmt: skip
    assert len(hooks.before) == 1
    assert hooks.committed == hooks.aborted == []  # its audit records stay "not known"
    assert store.check() is None


def test_a_commit_lost_with_its_session_is_reported_aborted(
    pg_state: PgState, clock: FakeClock, policy: PolicyBox, monkeypatch: pytest.MonkeyPatch
) -> None:
    hooks = Hooks()
    store = pg_state.open(before_commit=hooks.before_commit, on_commit=hooks.on_commit,
                          on_abort=hooks.on_abort)  # fmt: skip
    service = GrantService(store, clock, policy)

    def killed_then_commit(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        with psycopg.connect(pg_state.dsn, autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        conn.execute("COMMIT")

    monkeypatch.setattr(store, "_send_commit", killed_then_commit)
    with pytest.raises(StateStoreUnavailable):
        service.create_request(BOB, a_request().target, a_request().access_level,
                               a_request().duration, "reason")  # fmt: skip
    assert hooks.aborted == hooks.before
    assert hooks.committed == []
    assert pg_state.query("SELECT count(*) FROM requests") == [(0,)]


# --- two servers on one store -----------------------------------------------------------------


def test_a_revocation_on_one_server_moves_the_others_change_counter(
    pg_state: PgState, clock: FakeClock, policy: PolicyBox
) -> None:
    """What the enforcer of every server polls (every 0.1 s while it has sessions) and then
    re-reads the grants of its sessions on: a revocation made anywhere reaches them all."""
    here, there = pg_state.open(), pg_state.open()
    grant = request_in_state(GrantService(here, clock, policy), clock, RequestState.ACTIVE)
    seen = there.changes()
    GrantService(here, clock, policy).revoke(grant.id, BOB, "incident over")
    assert there.changes() > seen
    assert GrantService(there, clock, policy).get(grant.id).state is RequestState.REVOKED
