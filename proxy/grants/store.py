"""The state store: requests, approvals, credentials and history, kept in SQLite.

`Store` is the interface the lifecycle and the proxy use; `SqliteStore` is the one we ship, and a
PostgreSQL-backed store can be added behind the same interface. A store hands out transactions:
`write()` serializes writers (SQLite `BEGIN IMMEDIATE`; `SELECT ... FOR UPDATE` in Postgres), so a
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
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from proxy.auth.credentials import ScramVerifier
from proxy.errors import PgwardenError
from proxy.grants.requests import (
    AccessRequest,
    Action,
    ActiveGrant,
    Approval,
    RequestId,
    RequestState,
    Transition,
)
from proxy.grants.store_schema import (
    APPLICATION_ID,
    MIGRATIONS,
    REQUEST_COLUMNS,
    SCHEMA_VERSION,
    TOKEN_COLUMNS,
    TokenRecord,
    from_us,
    grant_from_row,
    request_from_row,
    request_to_row,
    to_us,
    token_from_row,
    token_to_row,
)
from proxy.policy.models import AccessLevelName, TargetName, UserName

# How long a writer waits for the lock before failing. Transactions here last milliseconds; 10 s
# absorbs a burst of approvers or a slow disk without turning contention into errors.
DEFAULT_BUSY_TIMEOUT = timedelta(seconds=10)


# Listing requests: a page of the newest ones by default, never an unbounded read.
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000


class StoreError(PgwardenError):
    """The state store cannot be used (wrong file, newer schema, misuse)."""


@dataclass(frozen=True, slots=True)
class RequestQuery:
    """Which requests to list, newest first: optionally one state, and whose.

    `everything` lists all requests (an admin). Otherwise a request is listed when it is
    `requester`'s own or its (target, access level) is in `scopes` (what the caller may approve).
    """

    state: RequestState | None = None
    everything: bool = False
    requester: UserName | None = None
    scopes: frozenset[tuple[TargetName, AccessLevelName]] = frozenset()
    limit: int = DEFAULT_LIST_LIMIT


class StoreTx(Protocol):
    """One transaction: reads always; writes only in a transaction from `Store.write()`."""

    def get_request(self, request_id: RequestId) -> AccessRequest | None: ...
    def approvals(self, request_id: RequestId) -> tuple[Approval, ...]: ...
    def history(self, request_id: RequestId) -> tuple[Transition, ...]: ...
    def credential(self, request_id: RequestId) -> ScramVerifier | None: ...
    def active_grants(self, user: UserName, target: TargetName) -> tuple[ActiveGrant, ...]:
        """Active requests of `user` on `target` (exact names) that have a credential."""
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

    def close(self) -> None: ...


class _SqliteTx:
    """`StoreTx` over one sqlite3 connection inside an open transaction."""

    def __init__(self, conn: sqlite3.Connection, *, writable: bool) -> None:
        self._conn = conn
        self._writable = writable
        self.dirty = False
        self.transitions: list[Transition] = []  # added in this transaction, for on_commit

    def _write(self, sql: str, params: tuple[object, ...], *, counts: bool = True) -> int:
        if not self._writable:
            raise StoreError("write attempted in a read-only transaction")
        changed = self._conn.execute(sql, params).rowcount
        # A no-op (a double click) is not a change; neither is a token write (module docstring).
        self.dirty = self.dirty or (counts and changed > 0)
        return changed

    def get_request(self, request_id: RequestId) -> AccessRequest | None:
        sql = f"SELECT {REQUEST_COLUMNS} FROM requests WHERE id = ?"  # noqa: S608 constant columns
        row = self._conn.execute(sql, (request_id,)).fetchone()
        return None if row is None else request_from_row(row)

    def approvals(self, request_id: RequestId) -> tuple[Approval, ...]:
        rows = self._conn.execute(
            "SELECT approver, at_us, comment FROM approvals WHERE request_id = ? ORDER BY at_us, "
            "approver",
            (request_id,),
        )
        return tuple(Approval(UserName(who), from_us(at), comment) for who, at, comment in rows)

    def history(self, request_id: RequestId) -> tuple[Transition, ...]:
        rows = self._conn.execute(
            "SELECT action, from_state, to_state, actor, at_us, why FROM transitions "
            "WHERE request_id = ? ORDER BY seq",
            (request_id,),
        )
        return tuple(
            Transition(
                request_id=request_id,
                action=Action(action),
                from_state=None if from_state is None else RequestState(from_state),
                to_state=RequestState(to_state),
                actor=UserName(actor),
                at=from_us(at_us),
                why=why,
            )
            for action, from_state, to_state, actor, at_us, why in rows
        )

    def credential(self, request_id: RequestId) -> ScramVerifier | None:
        row = self._conn.execute(
            "SELECT verifier FROM credentials WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else ScramVerifier.parse(row[0])

    def active_grants(self, user: UserName, target: TargetName) -> tuple[ActiveGrant, ...]:
        # `=` on TEXT uses SQLite's BINARY collation: exact, case-sensitive, no trimming.
        rows = self._conn.execute(
            "SELECT r.id, r.requester, r.target, r.access_level, r.activated_us, r.ends_us, "
            "c.verifier, c.created_us FROM requests r JOIN credentials c ON c.request_id = r.id "
            "WHERE r.requester = ? AND r.target = ? AND r.state = 'active'",
            (user, target),
        )
        return tuple(grant_from_row(row) for row in rows)

    def due_requests(self, now: datetime, pending_timeout: timedelta) -> tuple[AccessRequest, ...]:
        sql = (
            f"SELECT {REQUEST_COLUMNS} FROM requests "  # noqa: S608 constant columns
            "WHERE (state = 'active' AND ends_us <= ?) OR (state = 'pending' AND created_us <= ?)"
        )
        cutoff = to_us(now - pending_timeout)
        rows = self._conn.execute(sql, (to_us(now), cutoff))
        return tuple(request_from_row(row) for row in rows)

    def request_counts(self) -> tuple[tuple[str, str, str, int], ...]:
        rows = self._conn.execute(
            "SELECT state, target, access_level, count(*) FROM requests "
            "GROUP BY state, target, access_level"
        )
        return tuple((str(a), str(b), str(c), int(n)) for a, b, c, n in rows)

    def list_requests(self, query: RequestQuery) -> tuple[AccessRequest, ...]:
        where: list[str] = []
        params: list[object] = []
        if query.state is not None:
            where.append("state = ?")
            params.append(query.state.value)
        if not query.everything:
            whose = ["(target = ? AND access_level = ?)" for _ in sorted(query.scopes)]
            params.extend(name for scope in sorted(query.scopes) for name in scope)
            if query.requester is not None:
                whose.append("requester = ?")
                params.append(query.requester)
            if not whose:
                return ()
            where.append("(" + " OR ".join(whose) + ")")
        condition = " AND ".join(where) or "1"
        limit = max(1, min(query.limit, MAX_LIST_LIMIT))
        sql = (
            f"SELECT {REQUEST_COLUMNS} FROM requests WHERE {condition} "  # noqa: S608 placeholders only
            "ORDER BY created_us DESC, id LIMIT ?"
        )
        rows = self._conn.execute(sql, (*params, limit))
        return tuple(request_from_row(row) for row in rows)

    def insert_request(self, request: AccessRequest) -> None:
        self._write(
            f"INSERT INTO requests ({REQUEST_COLUMNS}) "  # noqa: S608 constant columns
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            request_to_row(request),
        )

    def update_request(self, request: AccessRequest) -> None:
        row = request_to_row(request)
        changed = self._write(
            "UPDATE requests SET state = ?, activated_us = ?, ends_us = ?, closed_us = ?, "
            "closed_by = ?, close_reason = ? WHERE id = ?",
            (request.state.value, *row[9:], request.id),  # row[9:]: activated_us onwards
        )
        if changed != 1:
            raise StoreError(f"request {request.id} does not exist")

    def add_approval(self, request_id: RequestId, approval: Approval) -> bool:
        inserted = self._write(
            "INSERT INTO approvals (request_id, approver, at_us, comment) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (request_id, approver) DO NOTHING",
            (request_id, approval.approver, to_us(approval.at), approval.comment),
        )
        return inserted == 1

    def add_transition(self, transition: Transition) -> None:
        self.transitions.append(transition)
        self._write(
            "INSERT INTO transitions (request_id, action, from_state, to_state, actor, at_us, why) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                transition.request_id,
                transition.action.value,
                None if transition.from_state is None else transition.from_state.value,
                transition.to_state.value,
                transition.actor,
                to_us(transition.at),
                transition.why,
            ),
        )

    def set_credential(self, request_id: RequestId, verifier: ScramVerifier, at: datetime) -> None:
        self._write(
            "INSERT INTO credentials (request_id, verifier, created_us) VALUES (?, ?, ?) "
            "ON CONFLICT (request_id) DO UPDATE SET verifier = excluded.verifier, "
            "created_us = excluded.created_us",
            (request_id, verifier.to_postgres(), to_us(at)),
        )

    def drop_credential(self, request_id: RequestId) -> None:
        self._write("DELETE FROM credentials WHERE request_id = ?", (request_id,))

    def token_by_digest(self, digest: bytes) -> TokenRecord | None:
        sql = f"SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE digest = ?"  # noqa: S608 constant
        row = self._conn.execute(sql, (digest,)).fetchone()
        return None if row is None else token_from_row(row)

    def tokens(self) -> tuple[TokenRecord, ...]:
        sql = f"SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_us, id"  # noqa: S608
        return tuple(token_from_row(row) for row in self._conn.execute(sql))

    def insert_token(self, token: TokenRecord) -> None:
        sql = f"INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"  # noqa: S608
        self._write(sql, token_to_row(token), counts=False)

    def touch_token(self, token_id: str, at: datetime) -> None:
        self._write(
            "UPDATE api_tokens SET last_used_us = ? WHERE id = ?", (to_us(at), token_id),
            counts=False,
        )  # fmt: skip

    def revoke_token(self, token_id: str, at: datetime) -> bool:
        changed = self._write(
            "UPDATE api_tokens SET revoked_us = ? WHERE id = ? AND revoked_us IS NULL",
            (to_us(at), token_id), counts=False,
        )  # fmt: skip
        return changed == 1


class SqliteStore:
    """A `Store` in one SQLite file, safe to share between threads and processes."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: timedelta = DEFAULT_BUSY_TIMEOUT,
        on_commit: Callable[[list[Transition]], None] | None = None,
    ) -> None:
        self.path = Path(path)
        # Told the transitions of each committed write transaction (the audit log listens).
        self._on_commit = on_commit
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        try:
            self._open_schema(self._connection())
        except sqlite3.Error as exc:  # a directory that is not there, a file that is no database
            self.close()
            raise StoreError(
                f"cannot open {self.path} as a state database ({exc}); point it at pgwarden's "
                "state file, or at a new file in a writable directory"
            ) from exc
        except BaseException:
            self.close()
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:  # again: close() may have run while we waited for the lock
                raise StoreError(f"store {self.path} is closed")
            # timeout= is SQLite's busy_timeout; isolation_level=None: we issue BEGIN IMMEDIATE
            # and COMMIT ourselves instead of letting the sqlite3 module guess.
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout.total_seconds(),
                isolation_level=None,
                check_same_thread=False,  # only so that close() may close it from another thread
            )
            self._connections.append(conn)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        self._local.conn = conn
        return conn

    def _open_schema(self, conn: sqlite3.Connection) -> None:
        """Refuse a foreign or newer file, switch to WAL, apply pending migrations."""
        version = _check_version(self.path, conn)  # first: a refused file is left as it was
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")  # stored in the file: once per file
        if version == SCHEMA_VERSION:
            return  # the common case takes no write lock
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _check_version(self.path, conn)  # again: another process may have migrated
            for statements in MIGRATIONS[version:]:
                for statement in statements:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def write(self) -> Iterator[StoreTx]:
        conn = self._begin("BEGIN IMMEDIATE")
        tx = _SqliteTx(conn, writable=True)
        try:
            yield tx
            if tx.dirty:
                conn.execute("UPDATE change_counter SET value = value + 1 WHERE id = 1")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if tx.transitions and self._on_commit is not None:
            self._on_commit(tx.transitions)  # only what committed: a rollback is never reported

    @contextmanager
    def read(self) -> Iterator[StoreTx]:
        conn = self._begin("BEGIN")
        try:
            yield _SqliteTx(conn, writable=False)
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def _begin(self, statement: str) -> sqlite3.Connection:
        conn = self._connection()
        if conn.in_transaction:
            raise StoreError("nested transaction on one thread (finish the outer one first)")
        conn.execute(statement)
        return conn

    def changes(self) -> int:
        row = self._connection().execute("SELECT value FROM change_counter WHERE id = 1")
        value: int = row.fetchone()[0]
        return value

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


def _check_version(path: Path, conn: sqlite3.Connection) -> int:
    """The file's schema version, if this pgwarden can use the file; StoreError otherwise."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    app_id: int = conn.execute("PRAGMA application_id").fetchone()[0]
    if app_id not in (0, APPLICATION_ID) or (app_id == 0 and version != 0):
        raise StoreError(f"{path} is not a pgwarden state database (application_id {app_id})")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has state schema version {version}, newer than this pgwarden supports "
            f"({SCHEMA_VERSION}); upgrade pgwarden or point it at another file"
        )
    return version
