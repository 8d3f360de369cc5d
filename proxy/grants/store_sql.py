"""The SQL of the state store: `SqliteTx`, one transaction's reads and writes on one connection.

`SqliteStore` (store.py) opens the transaction and hands a `SqliteTx` to its caller; every
statement here is parameterised (the only text put into SQL is a constant column list or a
string of placeholders). `RequestQuery` is the one read with options: which requests to list.

The SQL is the common subset of SQLite and PostgreSQL (`ON CONFLICT`, `excluded`, `TRUE`), so
`PostgresStore` (pg_store.py) runs these very statements, through a connection that turns the
`?` placeholders into psycopg's `%s`: one text of each query, whichever store runs it.

A write marks the transaction `dirty` when it changed a row that matters to grants, so that the
store bumps its change counter; token writes do not (store.py says why). The transitions added
are kept for the store's `on_commit` listener. The notification outbox's writes (proxy/notify)
do not count either: a row to deliver changes no grant. Single sign-on's statements are mixed in
from `store_identity.py`. Once the file is gone (`store_watch.py`) the
transaction is `untrusted`: reads go on, but the login lookup refuses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from proxy.auth.credentials import ScramVerifier
from proxy.grants.requests import (
    AccessRequest,
    Action,
    ActiveGrant,
    Approval,
    RequestId,
    RequestState,
    Transition,
)
from proxy.grants.store_identity import IdentitySql
from proxy.grants.store_schema import (
    NOTIFICATION_COLUMNS,
    REQUEST_COLUMNS,
    TOKEN_COLUMNS,
    Notification,
    TokenRecord,
    from_us,
    grant_from_row,
    notification_from_row,
    request_from_row,
    request_to_row,
    to_us,
    token_from_row,
    token_to_row,
)
from proxy.grants.store_watch import StateStoreUnavailable, StoreError
from proxy.policy.models import AccessLevelName, TargetName, UserName

# Listing requests: a page of the newest ones by default, never an unbounded read.
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000


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


class Cursor(Protocol):
    """What the statements here need of a cursor (sqlite3's and psycopg's both fit)."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A connection inside an open transaction that takes `?` placeholders (a sqlite3
    connection, or pg_store's psycopg adapter)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...


class SqliteTx(IdentitySql):
    """`StoreTx` over one connection inside an open transaction (SQLite's, or PostgreSQL's)."""

    def __init__(
        self,
        conn: Connection,
        *,
        writable: bool,
        untrusted: StateStoreUnavailable | None = None,
    ) -> None:
        self._conn = conn
        self._writable = writable
        self._untrusted = untrusted  # the file is gone: reads go on, logins are refused
        self.dirty = False
        self.transitions: list[Transition] = []  # added in this transaction, for on_commit
        self.announced = False  # its transitions were recorded before the COMMIT (write-ahead)

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
        if self._untrusted is not None:
            raise self._untrusted  # no new access from a history this process alone still holds
        # `=` on TEXT uses SQLite's BINARY collation: exact, case-sensitive, no trimming.
        rows = self._conn.execute(
            "SELECT r.id, r.requester, r.target, r.access_level, r.activated_us, r.ends_us, "
            "c.verifier, c.created_us FROM requests r JOIN credentials c ON c.request_id = r.id "
            "WHERE r.requester = ? AND r.target = ? AND r.state = 'active'",
            (user, target),
        )
        return tuple(grant_from_row(row) for row in rows)

    def all_active_grants(self) -> tuple[ActiveGrant, ...]:
        """Every active grant with its credential: what a replica keeps in memory for logins
        (`grant_cache.py`). Active grants are few (people, not queries)."""
        if self._untrusted is not None:
            raise self._untrusted
        rows = self._conn.execute(
            "SELECT r.id, r.requester, r.target, r.access_level, r.activated_us, r.ends_us, "
            "c.verifier, c.created_us FROM requests r JOIN credentials c ON c.request_id = r.id "
            "WHERE r.state = 'active'"
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
        condition = " AND ".join(where) or "TRUE"
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

    # --- the notification outbox (proxy/notify) -------------------------------------------

    def add_notification(
        self, event_id: str, destination: str, kind: str, body: str, at: datetime
    ) -> None:
        self._write(
            "INSERT INTO notifications (event_id, destination, kind, body, created_us, "
            "next_attempt_us) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (event_id, destination) DO NOTHING",
            (event_id, destination, kind, body, to_us(at), to_us(at)), counts=False,
        )  # fmt: skip

    def due_notifications(self, now: datetime, limit: int) -> tuple[Notification, ...]:
        sql = (
            f"SELECT {NOTIFICATION_COLUMNS} FROM notifications "  # noqa: S608 constant columns
            "WHERE delivered_us IS NULL AND gave_up_us IS NULL AND next_attempt_us <= ? "
            "ORDER BY id LIMIT ?"
        )
        rows = self._conn.execute(sql, (to_us(now), max(1, limit)))
        return tuple(notification_from_row(row) for row in rows)

    def notification_delivered(self, row_id: int, attempts: int, at: datetime) -> bool:
        changed = self._write(
            "UPDATE notifications SET attempts = ?, delivered_us = ?, last_error = NULL "
            "WHERE id = ? AND delivered_us IS NULL",
            (attempts, to_us(at), row_id), counts=False,
        )  # fmt: skip
        return changed == 1

    def notification_failed(
        self, row_id: int, attempts: int, error: str, retry_at: datetime, gave_up: bool
    ) -> None:
        gave_up_us = to_us(retry_at) if gave_up else None
        self._write(
            "UPDATE notifications SET attempts = ?, last_error = ?, next_attempt_us = ?, "
            "gave_up_us = ? WHERE id = ? AND delivered_us IS NULL",
            (attempts, error, to_us(retry_at), gave_up_us, row_id), counts=False,
        )  # fmt: skip

    def undelivered_notifications(self) -> int:
        row = self._conn.execute(
            "SELECT count(*) FROM notifications WHERE delivered_us IS NULL AND gave_up_us IS NULL"
        ).fetchone()
        return 0 if row is None else int(row[0])

    def notification_health(self, since: datetime) -> tuple[datetime | None, int]:
        """When the oldest row still to send was written (None: none), and how many rows were
        given up since `since`: what `/readyz` notes (proxy/runtime/duties.py)."""
        oldest = self._conn.execute(
            "SELECT min(created_us) FROM notifications "
            "WHERE delivered_us IS NULL AND gave_up_us IS NULL"
        ).fetchone()
        gave_up = self._conn.execute(
            "SELECT count(*) FROM notifications WHERE gave_up_us >= ?", (to_us(since),)
        ).fetchone()
        at = None if oldest is None or oldest[0] is None else from_us(int(oldest[0]))
        return at, 0 if gave_up is None else int(gave_up[0])

    def prune_notifications(self, before: datetime) -> int:
        """Forget rows delivered or given up before `before`; how many."""
        return self._write(
            "DELETE FROM notifications WHERE delivered_us < ? OR gave_up_us < ?",
            (to_us(before), to_us(before)), counts=False,
        )  # fmt: skip

    def slack_message(self, request_id: RequestId) -> tuple[str, str] | None:
        row = self._conn.execute(
            "SELECT channel, ts FROM slack_messages WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def put_slack_message(self, request_id: RequestId, channel: str, ts: str) -> None:
        self._write(
            "INSERT INTO slack_messages (request_id, channel, ts) VALUES (?, ?, ?) "
            "ON CONFLICT (request_id) DO UPDATE SET channel = excluded.channel, ts = excluded.ts",
            (request_id, channel, ts), counts=False,
        )  # fmt: skip
