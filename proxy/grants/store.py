"""The state store: requests, approvals, credentials and history; the interface, kept in SQLite.

`Store` is the interface the lifecycle and the proxy use; `SqliteStore` is the embedded default
(its SQL is in `store_sql.py`, its schema in `store_schema.py`); `PostgresStore` (`pg_store.py`)
keeps the same tables in PostgreSQL, for several servers. A store hands out transactions:
`write()` serializes writers (SQLite `BEGIN IMMEDIATE`; an advisory lock in PostgreSQL), so a
read-check-write sequence in the lifecycle — count approvals, then activate — cannot lose an update
to a concurrent approver in another thread or process. `read()` gives a consistent snapshot.

SQLite settings, and why:
- WAL: readers (the proxy at login) never block the writer or each other.
- `synchronous=FULL`: an acknowledged revocation must survive a power cut. With WAL, NORMAL can
  lose the last commits on power loss, which would resurrect a revoked grant; writes here are a
  few per human action, so FULL's fsync per commit costs nothing that matters.
- `busy_timeout`: writers queue instead of failing; `foreign_keys=ON` so no approval, credential
  or history row can point at a request that does not exist.
- Schema versions in `PRAGMA user_version`, forward migrations applied at open inside one write
  transaction (so concurrent openers do not race), a newer file is refused.

API tokens live here too (`api_tokens`: only a SHA-256 digest per token). Token writes do not move
the change counter: it tells the enforcer that *grants* may have changed, and a token being used
or revoked changes no grant.

Instants are stored as integer microseconds since the Unix epoch, UTC; durations as microseconds.
Connections are per thread (sqlite3 objects are not shared across threads); `close()` closes all.
Only the first one may create the file: the others open it only if it is there, so that a file
deleted under a running server is never silently made anew, empty.

The store watches its own file (`store_watch.py`): deleted or replaced, or failing to write (disk
full, I/O error, read-only), every operation it refuses raises `StateStoreUnavailable`, which
says so and names the path; `problem()` tells /readyz, `check()` is housekeeping's look.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from proxy.auth.credentials import ScramVerifier
from proxy.grants.requests import AccessRequest, ActiveGrant, Approval, RequestId, Transition
from proxy.grants.store_identity import ApiSession, PersonRecord, SignInFlow
from proxy.grants.store_schema import Notification, TokenRecord, open_schema
from proxy.grants.store_sql import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, RequestQuery, SqliteTx
from proxy.grants.store_watch import (
    FileIdentity,
    Problem,
    StateStoreUnavailable,
    StoreError,
    StoreWatch,
    identity_of,
)
from proxy.policy.models import TargetName, UserName

# What the rest of pgwarden imports from here; some of it is defined beside this module.
__all__ = [
    "DEFAULT_LIST_LIMIT",
    "MAX_LIST_LIMIT",
    "RequestQuery",
    "SqliteStore",
    "StateStoreUnavailable",
    "Store",
    "StoreError",
    "StoreTx",
]

# How long a writer waits for the lock before failing. Transactions here last milliseconds; 10 s
# absorbs a burst of approvers or a slow disk without turning contention into errors.
DEFAULT_BUSY_TIMEOUT = timedelta(seconds=10)


class StoreTx(Protocol):
    """One transaction: reads always; writes only in a transaction from `Store.write()`."""

    def get_request(self, request_id: RequestId) -> AccessRequest | None: ...
    def approvals(self, request_id: RequestId) -> tuple[Approval, ...]: ...
    def history(self, request_id: RequestId) -> tuple[Transition, ...]: ...
    def credential(self, request_id: RequestId) -> ScramVerifier | None: ...
    def active_grants(self, user: UserName, target: TargetName) -> tuple[ActiveGrant, ...]:
        """Active requests of `user` on `target` (exact names) that have a credential: what a
        login is checked against. StateStoreUnavailable when the store is no longer trusted."""
        ...

    def all_active_grants(self) -> tuple[ActiveGrant, ...]:
        """Every active request that has a credential (a replica's login cache)."""
        ...

    def due_requests(self, now: datetime, pending_timeout: timedelta) -> tuple[AccessRequest, ...]:
        """Active requests whose window ended by `now`, pending ones older than the timeout."""
        ...

    def list_requests(self, query: RequestQuery) -> tuple[AccessRequest, ...]: ...
    def request_counts(self) -> tuple[tuple[str, str, str, int], ...]:
        """(state, target, access level, count) for every combination present (for metrics)."""
        ...

    def insert_request(self, request: AccessRequest) -> None: ...
    def update_request(self, request: AccessRequest) -> None:
        """Store the request's state, window and closing fields (the rest never changes)."""
        ...

    def add_approval(self, request_id: RequestId, approval: Approval) -> bool:
        """Record an approval; False (and no change) if this approver already approved."""
        ...

    def add_transition(self, transition: Transition) -> None: ...
    def set_credential(self, request_id: RequestId, verifier: ScramVerifier, at: datetime) -> None:
        """Store the request's credential verifier, replacing any previous one."""
        ...

    def drop_credential(self, request_id: RequestId) -> None: ...
    def token_by_digest(self, digest: bytes) -> TokenRecord | None: ...
    def tokens(self) -> tuple[TokenRecord, ...]: ...
    def insert_token(self, token: TokenRecord) -> None: ...
    def touch_token(self, token_id: str, at: datetime) -> None: ...
    def revoke_token(self, token_id: str, at: datetime) -> bool:
        """Mark a token revoked; False if there is no such token or it was already revoked."""
        ...

    # The notification outbox (proxy/notify); its writes never move the change counter.
    def add_notification(
        self, event_id: str, destination: str, kind: str, body: str, at: datetime
    ) -> None:
        """A row to deliver, due at once; none if this event already has one for `destination`."""
        ...

    def due_notifications(self, now: datetime, limit: int) -> tuple[Notification, ...]:
        """Rows neither delivered nor given up whose next attempt is due by `now`, oldest first."""
        ...

    def notification_delivered(self, row_id: int, attempts: int, at: datetime) -> bool:
        """Mark a row delivered; False if it already was (another leader's, or a retry's)."""
        ...

    def notification_failed(
        self, row_id: int, attempts: int, error: str, retry_at: datetime, gave_up: bool
    ) -> None:
        """Record a failed attempt: try again from `retry_at`, or (`gave_up`) never again."""
        ...

    def undelivered_notifications(self) -> int: ...
    def notification_health(self, since: datetime) -> tuple[datetime | None, int]:
        """(when the oldest row still to send was written, rows given up since `since`)."""
        ...

    def prune_notifications(self, before: datetime) -> int: ...
    # The Slack message showing a request (proxy/notify/slack_sender.py): (channel, ts).
    def slack_message(self, request_id: RequestId) -> tuple[str, str] | None: ...
    def put_slack_message(self, request_id: RequestId, channel: str, ts: str) -> None: ...

    # Single sign-on (store_identity.py): only people writes move the change counter.
    def insert_api_session(self, session: ApiSession) -> None: ...
    def api_session(self, digest: bytes) -> ApiSession | None: ...
    def revoke_api_session(self, digest: bytes, at: datetime) -> bool: ...
    def prune_api_sessions(self, before: datetime) -> int: ...
    def session_by_refresh(self, refresh_digest: bytes) -> ApiSession | None: ...
    def revoke_refresh_chain(self, refresh_digest: bytes, at: datetime) -> int: ...
    def revoke_sessions_of(self, issuer: str, subject: str, at: datetime) -> int: ...
    def remove_person(self, user: UserName, at: datetime) -> bool: ...
    def person(self, user: UserName) -> PersonRecord | None: ...
    def person_by_subject(self, issuer: str, subject: str) -> PersonRecord | None: ...
    def people(self) -> tuple[PersonRecord, ...]: ...
    def put_person(self, person: PersonRecord) -> None: ...
    def insert_sign_in_flow(self, flow: SignInFlow) -> None: ...
    def sign_in_flow(self, digest: bytes) -> SignInFlow | None: ...
    def use_sign_in_flow(self, digest: bytes, at: datetime) -> bool: ...
    def pending_sign_in_flows(self, now: datetime) -> int: ...
    def prune_sign_in_flows(self, before: datetime) -> int: ...


class Store(Protocol):
    """Where requests live. Every write bumps a change counter that readers can poll."""

    def write(self) -> AbstractContextManager[StoreTx]:
        """A write transaction; commits on normal exit, rolls back on an exception."""
        ...

    def read(self) -> AbstractContextManager[StoreTx]:
        """A read-only snapshot."""
        ...

    def changes(self) -> int:
        """A counter bumped by every committed write, for cheap polling."""
        ...

    def problem(self) -> StateStoreUnavailable | None:
        """What the store refuses now and why (SQLite: its file's identity checked anew), or
        None. Never waits on the network."""
        ...

    def check(self) -> StateStoreUnavailable | None:
        """`problem()`, after trying one small write if writes were failing (so that the store
        recovers by itself once they work again, with no traffic); PostgreSQL: after a round
        trip in any case (an unreachable database is noticed with no traffic). Blocking."""
        ...

    def errors(self) -> dict[Problem, int]:
        """Failures so far, by problem (`pgwarden_state_store_errors_total{kind}`)."""
        ...

    def close(self) -> None: ...


class SqliteStore:
    """A `Store` in one SQLite file, safe to share between threads and processes.

    `create=False` opens only a file that is there; `expect`: only if it is that file (a worker
    process opens what its primary opened, never a file put in its place since)."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: timedelta = DEFAULT_BUSY_TIMEOUT,
        on_commit: Callable[[list[Transition]], None] | None = None,
        before_commit: Callable[[StoreTx, list[Transition]], None] | None = None,
        on_abort: Callable[[list[Transition], BaseException], None] | None = None,
        create: bool = True,
        expect: FileIdentity | None = None,
    ) -> None:
        self.path = Path(path)
        # Told the transitions of each committed write transaction (the audit log listens).
        self._on_commit = on_commit
        self._before_commit, self._on_abort = before_commit, on_abort
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._watch: StoreWatch | None = None  # from the moment the file is open
        self._held_lock = threading.RLock()
        try:
            open_schema(self.path, self._connection("rwc" if create else "rw"))
            identity = identity_of(self.path)
            if expect is not None and identity != expect:
                raise StoreError(
                    f"{self.path} is not the state file pgwarden's primary process opened: it was "
                    "deleted or replaced since"
                )
            # Opened now, used only once the file is gone: the file as it was (store_watch.py).
            self._held = self._connect("rw")
            self._watch = StoreWatch(self.path, identity)
        except (sqlite3.Error, OSError) as exc:  # no such directory, a file that is no database
            self.close()
            raise StoreError(
                f"cannot open {self.path} as a state database ({exc}); point it at pgwarden's "
                "state file, or at a new file in a writable directory"
            ) from exc
        except BaseException:
            self.close()
            raise

    def _connection(self, mode: str = "rw") -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(mode)
            # A thread's first connection opens the file the path names *now*: if that is
            # another file than the store's, the watch says so, and this one is not used.
            if self._watch is not None and (gone := self._watch.gone()) is not None:
                conn.close()
                raise gone
            self._local.conn = conn
        elif self._closed:
            raise StoreError(f"store {self.path} is closed")
        return conn

    def _connect(self, mode: str) -> sqlite3.Connection:
        """A new connection; mode `rw` never creates the file, `rwc` may."""
        with self._lock:
            if self._closed:
                raise StoreError(f"store {self.path} is closed")
            # timeout= is SQLite's busy_timeout; isolation_level=None: we issue BEGIN IMMEDIATE
            # and COMMIT ourselves instead of letting the sqlite3 module guess.
            conn = sqlite3.connect(
                f"file:{quote(str(self.path))}?mode={mode}",
                uri=True,
                timeout=self._busy_timeout.total_seconds(),
                isolation_level=None,
                check_same_thread=False,  # so that close() may close it from another thread
            )
            self._connections.append(conn)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    @property
    def watch(self) -> StoreWatch:
        assert self._watch is not None, "the store is not open"
        return self._watch

    @contextmanager
    def write(self) -> Iterator[StoreTx]:
        """A write transaction. With transitions, `before_commit` is called before the COMMIT
        (the audit log's write-ahead records: if it raises, the transaction rolls back and the
        error propagates), then `on_commit` after it, or `on_abort` if the COMMIT fails."""
        tx: SqliteTx | None = None
        try:
            with self._writing() as conn:
                tx = SqliteTx(conn, writable=True)
                yield tx
                if tx.dirty:
                    conn.execute("UPDATE change_counter SET value = value + 1 WHERE id = 1")
                if tx.transitions and self._before_commit is not None:
                    self._before_commit(tx, tx.transitions)
                    tx.announced = True
        except BaseException as exc:
            if tx is not None and tx.announced and self._on_abort is not None:
                self._on_abort(tx.transitions, exc)  # recorded, then not committed
            raise
        if tx.transitions and self._on_commit is not None:
            self._on_commit(tx.transitions)  # only what committed: a rollback is never reported

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection, committed on normal exit."""
        if (gone := self.watch.gone()) is not None:
            raise gone  # a write now would land in a file no later start reads
        with self._failures(writing=True):
            conn = self._begin(self._connection(), "BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                _roll_back(conn)
                raise
        self.watch.succeeded(writing=True)

    @contextmanager
    def read(self) -> Iterator[StoreTx]:
        gone = self.watch.gone()
        with self._failures(writing=False), self._reading(gone) as conn:
            self._begin(conn, "BEGIN")
            try:
                yield SqliteTx(conn, writable=False, untrusted=gone)
            finally:
                _roll_back(conn)
        if gone is None:
            self.watch.succeeded(writing=False)

    @contextmanager
    def _reading(self, gone: StateStoreUnavailable | None) -> Iterator[sqlite3.Connection]:
        """This thread's connection; once the file is gone, the one held from the start (any
        other may have been opened on what the path names now), one thread at a time."""
        if gone is None:
            yield self._connection()
            return
        with self._held_lock:
            yield self._held

    def _begin(self, conn: sqlite3.Connection, statement: str) -> sqlite3.Connection:
        if conn.in_transaction:
            raise StoreError("nested transaction on one thread (finish the outer one first)")
        conn.execute(statement)
        return conn

    @contextmanager
    def _failures(self, *, writing: bool) -> Iterator[None]:
        """sqlite3 errors about the file become StateStoreUnavailable (counted and logged)."""
        try:
            yield
        except sqlite3.Error as exc:
            error = self.watch.failed(exc, writing=writing)
            if error is None:
                raise  # about the statement (a constraint): the caller's to handle
            raise error from exc

    def changes(self) -> int:
        gone = self.watch.gone()
        with self._failures(writing=False), self._reading(gone) as conn:
            row = conn.execute("SELECT value FROM change_counter WHERE id = 1").fetchone()
        if gone is None:
            self.watch.succeeded(writing=False)
        value: int = row[0]
        return value

    def problem(self) -> StateStoreUnavailable | None:
        return self.watch.gone() or self.watch.problem

    def errors(self) -> dict[Problem, int]:
        return self.watch.errors()

    def check(self) -> StateStoreUnavailable | None:
        problem = self.problem()
        if problem is None or problem.problem.lasting or not problem.writing:
            return problem
        # A write that must reach the disk (a change undone in the same transaction still
        # writes its page; a no-op UPDATE writes nothing), and changes nothing anyone can see.
        with contextlib.suppress(StateStoreUnavailable), self._writing() as conn:
            conn.execute("UPDATE change_counter SET value = value + 1 WHERE id = 1")
            conn.execute("UPDATE change_counter SET value = value - 1 WHERE id = 1")
        return self.problem()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _roll_back(conn: sqlite3.Connection) -> None:
    """End an open transaction; after a failed COMMIT SQLite may have ended it already."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
