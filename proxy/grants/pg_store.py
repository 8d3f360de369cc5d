"""The state store in PostgreSQL: `PostgresStore`, the `Store` that several servers can share.

The same tables and SQL as the SQLite store (`pg_schema.py`, `store_sql.py`), over a psycopg
connection pool. What the lifecycle relies on, and how it holds here:

- **Writes are serialized.** Every write transaction first takes one transaction-scoped advisory
  lock (`pg_advisory_xact_lock`, one key per schema), as SQLite's `BEGIN IMMEDIATE` takes the
  file's write lock: whatever a lifecycle step reads, checks and writes (count approvals, then
  activate; look at the user's other credentials, then issue one) no other writer, in this
  process or on another server, runs in between. Simpler than SERIALIZABLE with retries, which
  would have to replay whole steps and their write-ahead audit records; writes are a few per
  human action, so one at a time costs nothing. The transaction stays READ COMMITTED, so each
  statement sees everything committed before the lock was granted (REPEATABLE READ would fix its
  snapshot at the lock statement, before the wait). The lock ends with the transaction, or with
  the session if pgwarden dies (and `idle_in_transaction_session_timeout` frees it from a hung
  one). Reads are REPEATABLE READ READ ONLY: one snapshot, no lock.
- **The hooks** run as in `SqliteStore.write`: `before_commit` before the COMMIT (raising rolls
  back), `on_commit` after it, `on_abort` when it failed after `before_commit`. Across a network
  a COMMIT's answer can be lost with its connection; the store then asks a new connection
  whether that transaction committed (`pg_xact_status`) and reports what really happened. When
  it cannot tell, it raises and calls neither hook: the audit records stay without an outcome,
  "not known to have taken effect", which is the truth.
- **Failures** become `StateStoreUnavailable` naming the database (`where`: host, port,
  database and schema; never the user or password), through the same `ProblemLog` as SQLite's:
  no connection → `unreachable`; a read-only server (a standby) → `read_only`; a privilege
  missing → `denied`; the lock or a statement past its timeout → `busy`; disk full, I/O error,
  corruption as in SQLite. While the database is unreachable every operation is refused at once
  (no login or API thread waits on a dead connection); `check()`, which housekeeping calls once
  a second off the event loop, tries it again and clears the problem when it answers.

Needs PostgreSQL 14 or newer (`MIN_SERVER_VERSION`: `pg_xact_status`, and the leader's
`idle_session_timeout`, proxy/cluster/leader.py); TLS is whatever the DSN says (`sslmode=...`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import psycopg
from psycopg_pool import ConnectionPool

from proxy.grants.pg_connection import (
    SESSION_ENDED,
    PostgresTx,
    alive,
    configure,
    connection_info,
    describe,
    one,
    problem_of,
    roll_back,
)
from proxy.grants.pg_schema import changes_channel, lock_key, migrate
from proxy.grants.requests import Transition
from proxy.grants.store import StoreTx
from proxy.grants.store_watch import Problem, ProblemLog, StateStoreUnavailable, StoreError

log = logging.getLogger(__name__)

DEFAULT_SCHEMA: Final = "pgwarden"
# Threads that use the store at once: the API's 4, housekeeping's and enforcement's 2, the event
# loop's login reads, and room for a check; a connection more is a backend process more.
POOL_SIZE: Final = 8
# How long an operation waits for a connection (none idle, and the database slow to give a new
# one) before the store counts it unreachable. Logins read the store on the event loop: this
# bounds the first wait of an outage (the next ones are refused at once). A connection, TLS
# included, takes milliseconds on a LAN, and the pool holds one per thread that uses it.
POOL_TIMEOUT: Final = 3.0
POOL_CLOSE_TIMEOUT: Final = 1.0  # seconds for a replaced pool's threads to end (else left to)
MIN_SERVER_VERSION: Final = 140000  # 14: idle_session_timeout (the leader's lease)
_COUNTER: Final = "SELECT value FROM change_counter WHERE id = 1"
_BUMP: Final = "UPDATE change_counter SET value = value + 1 WHERE id = 1 RETURNING value"
_ANNOUNCE: Final = (
    "SELECT pg_notify(%s, %s || ' ' || (extract(epoch FROM clock_timestamp()) * 1e6)::bigint)"
)


def check_server_version(version: int, where: str) -> None:
    """StoreError unless the server (`server_version_num`) is new enough for the store."""
    if version < MIN_SERVER_VERSION:
        found = f"{version // 10000}.{version % 10000}" if version >= 100000 else str(version)
        raise StoreError(
            f"the state store {where} runs PostgreSQL {found}; pgwarden needs 14 or newer there"
        )


class PostgresStore:
    """A `Store` in a PostgreSQL schema, safe to share between threads, processes and servers.

    `dsn`: a libpq connection string or URI (a secret: it is never shown). Opening applies the
    missing migrations; StoreError if the database cannot be reached or used."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        on_commit: Callable[[list[Transition]], None] | None = None,
        before_commit: Callable[[StoreTx, list[Transition]], None] | None = None,
        on_abort: Callable[[list[Transition], BaseException], None] | None = None,
        on_changes: Callable[[int], None] | None = None,
        pool_size: int = POOL_SIZE,
        pool_timeout: float = POOL_TIMEOUT,
        login_grace: float = 0.0,
    ) -> None:
        self._conninfo = connection_info(dsn)
        self.schema, self.where = schema, describe(self._conninfo, schema)
        self._on_commit, self._before_commit, self._on_abort = on_commit, before_commit, on_abort
        self._on_changes = on_changes  # told each change counter this process commits
        self.channel = changes_channel(schema)
        self._lock_key, self._pool_size = lock_key(schema), pool_size
        self._log = ProblemLog(self.where, login_grace=login_grace)  # for its messages
        self._local = threading.local()
        self._closed = False
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                check_server_version(conn.info.server_version, self.where)
                self._configure(conn)
                migrate(conn, schema, self.where)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"cannot open the state store {self.where}: {reason}") from exc
        self._pool_timeout = pool_timeout
        self._pool = self._new_pool()

    def _new_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        return ConnectionPool(
            self._conninfo, kwargs={"autocommit": True}, min_size=1, max_size=self._pool_size,
            open=True, configure=self._configure, timeout=self._pool_timeout,
            name="pgwarden-state",
        )  # fmt: skip

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        configure(conn, self.schema)

    @contextmanager
    def write(self) -> Iterator[StoreTx]:
        """A write transaction, serialized with every other (module docstring). With
        transitions, `before_commit` is called before the COMMIT (if it raises, the transaction
        rolls back and the error propagates), then `on_commit` after it, or `on_abort` if the
        COMMIT failed; neither when whether it committed cannot be known."""
        tx: PostgresTx | None = None
        unknown, counter = False, None
        try:
            with self._connection(writing=True, transaction=True, first="BEGIN") as (conn, _):
                try:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
                    tx = PostgresTx(conn, writable=True)
                    yield tx
                    if tx.dirty:
                        counter = self._count_change(conn)
                    if tx.transitions and self._before_commit is not None:
                        self._before_commit(tx, tx.transitions)
                        tx.announced = True
                    xid = one(conn, "SELECT pg_current_xact_id_if_assigned()::text")
                except BaseException:
                    roll_back(conn)
                    raise
                try:
                    self._send_commit(conn)
                except psycopg.OperationalError:
                    outcome = self._outcome(xid)
                    if outcome != "committed":
                        unknown = outcome != "aborted"
                        raise
                    log.warning("the answer to a COMMIT was lost; %s says it committed", self.where)
        except BaseException as exc:
            if unknown and tx is not None and tx.transitions:
                log.error("a write to %s may or may not have committed: %s", self.where, exc)
            elif tx is not None and tx.announced and self._on_abort is not None:
                self._on_abort(tx.transitions, exc)  # recorded, then not committed
            raise
        if counter is not None and self._on_changes is not None:
            self._on_changes(counter)
        if tx.transitions and self._on_commit is not None:
            self._on_commit(tx.transitions)  # only what committed: a rollback is never reported

    def _count_change(self, conn: psycopg.Connection[Any]) -> int:
        """Bump the change counter and announce it: every replica LISTENs on `channel`, and
        PostgreSQL delivers the NOTIFY only if this transaction commits. The payload is the new
        counter and the database's clock in microseconds (the propagation delay's start)."""
        counter = int(one(conn, _BUMP))
        conn.execute(_ANNOUNCE, (self.channel, str(counter)))
        return counter

    def _send_commit(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("COMMIT")

    def _outcome(self, xid: str | None) -> str | None:
        """Whether transaction `xid` committed ('committed', 'aborted', 'in progress'), asked on
        a connection of its own; None when nothing was written or nobody answers."""
        if xid is None:
            return None
        status = None
        with contextlib.suppress(psycopg.Error), psycopg.connect(self._conninfo) as conn:
            status = one(conn, "SELECT pg_xact_status(%s::xid8)", (xid,))
        return None if status is None else str(status)

    @contextmanager
    def read(self) -> Iterator[StoreTx]:
        begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        with self._connection(writing=False, transaction=True, first=begin) as (conn, _):
            try:
                yield PostgresTx(conn, writable=False)
            finally:
                roll_back(conn)

    def changes(self) -> int:
        with self._connection(writing=False, first=_COUNTER) as (_, counter):
            row = counter.fetchone()
        return 0 if row is None else int(row[0])

    def problem(self) -> StateStoreUnavailable | None:
        return self._log.problem

    def errors(self) -> dict[Problem, int]:
        return self._log.errors()

    def check(self) -> StateStoreUnavailable | None:
        """A round trip to the database, so that it is found gone with no traffic; while a
        problem is in force, a look on a connection of its own (a small write, if writes were
        failing), which clears the problem once it answers. Blocking."""
        problem = self.problem()
        if problem is None:
            with (
                contextlib.suppress(StateStoreUnavailable),
                self._connection(writing=False, first=_COUNTER),
            ):
                pass
            return self.problem()
        if not self._answers(writing=problem.writing):
            return self.problem()
        if problem.problem is Problem.UNREACHABLE:
            # The pool may be waiting out its backoff between connection attempts (seconds,
            # growing): a new pool connects now. Nothing holds the old one's connections but
            # what began before the outage; they are closed as they come back.
            old, self._pool = self._pool, self._new_pool()
            old.close(timeout=POOL_CLOSE_TIMEOUT)
        elif problem.problem is Problem.READ_ONLY:
            self._pool.drain()  # connections made while it was read-only are still so
        self._log.succeeded(writing=problem.writing)
        return self.problem()

    def suspect(self) -> None:
        """Something (the change feed losing its connection) says the database may be gone:
        look at once, on a connection of its own, so that the first login or API call of an
        outage is refused at once instead of waiting `POOL_TIMEOUT` for the pool. Blocking."""
        if self._log.problem is None and not self._closed:
            self._answers(writing=False)

    def _answers(self, *, writing: bool) -> bool:
        """Whether the database answers on a new connection (the pool's may be stale), with a
        write that changes nothing anyone sees if `writing`; if not, the real reason goes to
        the log and the error counter."""
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                self._configure(conn)
                if not writing:
                    conn.execute(_COUNTER)
                    return True
                conn.execute("BEGIN")  # the lock every write takes; a no-op UPDATE still
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
                conn.execute("UPDATE change_counter SET value = value WHERE id = 1")
                conn.execute("COMMIT")  # writes a row version: it proves that writes land
        except psycopg.Error as exc:
            self._log.report(problem_of(exc) or Problem.UNREACHABLE, writing=writing, cause=exc)
            return False
        return True

    @contextmanager
    def _connection(
        self, *, writing: bool, first: str, transaction: bool = False
    ) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Cursor[Any]]]:
        """A pooled connection, and the cursor of its `first` statement (`_live_connection`);
        psycopg errors about the database become StateStoreUnavailable. `transaction`: one per
        thread at a time (a nested write would wait for its own lock)."""
        if self._closed:
            raise StoreError(f"store {self.where} is closed")
        down = self._log.problem
        if down is not None and down.problem is Problem.UNREACHABLE:
            raise down  # no thread waits on a database known gone; check() looks again
        if transaction:
            if getattr(self._local, "in_transaction", False):
                raise StoreError("nested transaction on one thread (finish the outer one first)")
            self._local.in_transaction = True
        try:
            with self._live_connection(first) as (conn, cursor):  # PoolTimeout: unreachable
                try:
                    yield conn, cursor
                except psycopg.Error as exc:
                    if problem_of(exc) is Problem.READ_ONLY:  # a standby: after a failover?
                        self._pool.drain()  # new connections, wherever the DSN leads now
                    raise
        except psycopg.Error as exc:
            if self._closed:
                raise StoreError(f"store {self.where} is closed") from exc
            if (problem := problem_of(exc)) is None:
                raise  # about the statement (a constraint): the caller's to handle
            raise self._log.report(problem, writing=writing, cause=exc) from exc
        finally:
            if transaction:
                self._local.in_transaction = False
        self._log.succeeded(writing=writing)

    @contextmanager
    def _live_connection(
        self, first: str
    ) -> Iterator[tuple[psycopg.Connection[Any], psycopg.Cursor[Any]]]:
        """A pooled connection the server has not ended meanwhile, with `first` run on it (a
        BEGIN, or a read of one statement). After a restart every idle connection is dead: a
        dead one is dropped, not handed out, and the next one taken at once (psycopg_pool's own
        `check` sleeps a second and more between tries); one whose session the server ends as
        `first` reaches it (57P01..57P03) is dropped too, once. Bounded by the pool's size."""
        retried = False
        for _ in range(self._pool_size + 1):
            with self._pool.connection() as conn:
                if not alive(conn):
                    conn.close()  # the pool drops it when it comes back, and makes a new one
                    continue
                try:
                    cursor = conn.execute(first)
                except psycopg.OperationalError as exc:
                    if retried or exc.sqlstate not in SESSION_ENDED:
                        raise
                    retried = True
                    conn.close()
                    continue
                yield conn, cursor
                return
        raise psycopg.OperationalError("no live connection to the state database")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
