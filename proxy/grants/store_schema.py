"""The state database's schema (used by `store.py`): forward migrations, and rows ↔ values.

Migration *n* (1-based) takes a file from `PRAGMA user_version` n-1 to n. Append new migrations;
never edit a released one, since files in the field have already run it. `SqliteStore` applies the
missing ones at open, in one write transaction, and refuses a file whose version is higher than
`SCHEMA_VERSION` (written by a newer pgwarden, whose meaning we cannot know): `open_schema`.

Design: one id throughout — a request that is approved becomes the grant, so its window lives on
the `requests` row; there is no separate grants table to keep in step. Instants and durations
are integer microseconds (UTC epoch). Tables are STRICT so that a wrong type is an error, not a
silent conversion.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from proxy.auth.credentials import ScramVerifier
from proxy.grants.requests import AccessRequest, ActiveGrant, RequestId, RequestState
from proxy.grants.store_identity_schema import SQLITE_MIGRATION as IDENTITY_SQLITE_MIGRATION
from proxy.grants.store_watch import StoreError
from proxy.policy.models import AccessLevelName, TargetName, UserName

# "pgwd": marks the file as ours, so that pgwarden refuses to migrate someone else's database.
APPLICATION_ID: Final = 0x70677764

_STATES = "('pending', 'active', 'denied', 'cancelled', 'lapsed', 'expired', 'revoked')"
# What the deliverer looks for: rows still to send (the same text in both stores' schemas).
OUTBOX_DUE_INDEX: Final = (
    "CREATE INDEX notifications_due ON notifications (next_attempt_us, id) "
    "WHERE delivered_us IS NULL AND gave_up_us IS NULL"
)

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: the initial schema.
    (
        f"""CREATE TABLE requests (
            id TEXT PRIMARY KEY,
            requester TEXT NOT NULL,
            target TEXT NOT NULL,
            access_level TEXT NOT NULL,
            requested_us INTEGER NOT NULL,
            duration_us INTEGER NOT NULL CHECK (duration_us > 0),
            reason TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN {_STATES}),
            created_us INTEGER NOT NULL,
            activated_us INTEGER,
            ends_us INTEGER,
            closed_us INTEGER,
            closed_by TEXT,
            close_reason TEXT,
            CHECK ((activated_us IS NULL) = (ends_us IS NULL)),
            CHECK (state <> 'active' OR activated_us IS NOT NULL)
        ) STRICT""",
        # The proxy's login lookup and the janitor's sweep.
        "CREATE INDEX requests_by_login ON requests (requester, target, state)",
        "CREATE INDEX requests_by_state ON requests (state, ends_us, created_us)",
        """CREATE TABLE approvals (
            request_id TEXT NOT NULL REFERENCES requests (id),
            approver TEXT NOT NULL,
            at_us INTEGER NOT NULL,
            comment TEXT NOT NULL,
            UNIQUE (request_id, approver)
        ) STRICT""",
        # Only the SCRAM verifier of a temporary password, never the password.
        """CREATE TABLE credentials (
            request_id TEXT PRIMARY KEY REFERENCES requests (id),
            verifier TEXT NOT NULL,
            created_us INTEGER NOT NULL
        ) STRICT""",
        f"""CREATE TABLE transitions (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id TEXT NOT NULL REFERENCES requests (id),
            action TEXT NOT NULL,
            from_state TEXT CHECK (from_state IS NULL OR from_state IN {_STATES}),
            to_state TEXT NOT NULL CHECK (to_state IN {_STATES}),
            actor TEXT NOT NULL,
            at_us INTEGER NOT NULL,
            why TEXT NOT NULL
        ) STRICT""",
        "CREATE INDEX transitions_by_request ON transitions (request_id, seq)",
        """CREATE TABLE change_counter (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            value INTEGER NOT NULL
        ) STRICT""",
        "INSERT INTO change_counter (id, value) VALUES (1, 0)",
    ),
    # 2: API bearer tokens (only their SHA-256 digest), and listing requests newest first.
    (
        """CREATE TABLE api_tokens (
            id TEXT PRIMARY KEY,
            user_name TEXT NOT NULL,
            digest BLOB NOT NULL UNIQUE CHECK (length(digest) = 32),
            created_us INTEGER NOT NULL,
            last_used_us INTEGER,
            revoked_us INTEGER
        ) STRICT""",
        "CREATE INDEX requests_by_created ON requests (created_us)",
    ),
    # 3: the notification outbox (proxy/notify): one row per event and destination, written in
    # the transaction of the change it announces, delivered by the leader.
    (
        """CREATE TABLE notifications (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL,
            destination TEXT NOT NULL,
            kind TEXT NOT NULL,
            body TEXT NOT NULL,
            created_us INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_us INTEGER NOT NULL,
            delivered_us INTEGER,
            gave_up_us INTEGER,
            last_error TEXT,
            UNIQUE (event_id, destination)
        ) STRICT""",
        OUTBOX_DUE_INDEX,
    ),
    # 4: single sign-on: API sessions, people, sign-in flows (store_identity.py).
    IDENTITY_SQLITE_MIGRATION,
    # 5: the Slack message that shows each request (proxy/notify/slack_sender.py), updated in
    # place: its channel and `ts`, Slack's id of a message. No foreign key: a leftover row names
    # a message, never a grant.
    (
        """CREATE TABLE slack_messages (
            request_id TEXT PRIMARY KEY,
            channel TEXT NOT NULL,
            ts TEXT NOT NULL
        ) STRICT""",
    ),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)


def open_schema(path: Path, conn: sqlite3.Connection) -> None:
    """Refuse a foreign or newer file, switch to WAL, apply pending migrations."""
    version = _check_version(path, conn)  # first: a refused file is left as it was
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode = WAL")  # stored in the file: once per file
    if version == SCHEMA_VERSION:
        return  # the common case takes no write lock
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _check_version(path, conn)  # again: another process may have migrated
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


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


# --- between rows and values ----------------------------------------------------------------

TOKEN_COLUMNS = "id, user_name, digest, created_us, last_used_us, revoked_us"  # noqa: S105 columns


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An API bearer token as stored: who it speaks for, and the SHA-256 digest of the secret
    (the secret itself is shown once at creation and never stored)."""

    id: str
    user: UserName
    digest: bytes = field(repr=False)
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


def token_from_row(row: tuple[Any, ...]) -> TokenRecord:
    id_, user, digest, created_us, last_used_us, revoked_us = row
    return TokenRecord(
        id_, UserName(user), bytes(digest), from_us(created_us),
        _opt_from_us(last_used_us), _opt_from_us(revoked_us),
    )  # fmt: skip


def token_to_row(token: TokenRecord) -> tuple[object, ...]:
    return (
        token.id, token.user, token.digest, to_us(token.created_at),
        _opt_to_us(token.last_used_at), _opt_to_us(token.revoked_at),
    )  # fmt: skip


NOTIFICATION_COLUMNS = (
    "id, event_id, destination, kind, body, created_us, attempts, next_attempt_us, last_error"
)


@dataclass(frozen=True, slots=True)
class Notification:
    """An outbox row still to deliver: event `event_id` (what a receiver deduplicates on) of
    `kind` for `destination`, its `body` (the event's JSON document), and how far it got."""

    id: int
    event_id: str
    destination: str
    kind: str
    body: str
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    last_error: str | None


def notification_from_row(row: tuple[Any, ...]) -> Notification:
    id_, event_id, destination, kind, body, created_us, attempts, next_us, error = row
    return Notification(
        int(id_), event_id, destination, kind, body, from_us(created_us), int(attempts),
        from_us(next_us), error,
    )  # fmt: skip


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
REQUEST_COLUMNS = (
    "id, requester, target, access_level, requested_us, duration_us, reason, state, created_us, "
    "activated_us, ends_us, closed_us, closed_by, close_reason"
)


def to_us(instant: datetime) -> int:
    """Microseconds since the epoch; refuses naive datetimes rather than guess their zone."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"naive datetime {instant.isoformat()} (pgwarden uses aware UTC times)")
    return (instant - _EPOCH) // _MICROSECOND


def from_us(value: int) -> datetime:
    return _EPOCH + value * _MICROSECOND


def _opt_from_us(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def _opt_to_us(instant: datetime | None) -> int | None:
    return None if instant is None else to_us(instant)


def request_from_row(row: tuple[Any, ...]) -> AccessRequest:
    (id_, requester, target, level, requested_us, duration_us, reason, state, created_us) = row[:9]
    activated_us, ends_us, closed_us, closed_by, close_reason = row[9:]
    return AccessRequest(
        id=RequestId(id_),
        requester=UserName(requester),
        target=TargetName(target),
        access_level=AccessLevelName(level),
        requested_duration=requested_us * _MICROSECOND,
        duration=duration_us * _MICROSECOND,
        reason=reason,
        state=RequestState(state),
        created_at=from_us(created_us),
        activated_at=_opt_from_us(activated_us),
        ends_at=_opt_from_us(ends_us),
        closed_at=_opt_from_us(closed_us),
        closed_by=None if closed_by is None else UserName(closed_by),
        close_reason=close_reason,
    )


def grant_from_row(row: tuple[Any, ...]) -> ActiveGrant:
    id_, user, target, level, activated_us, ends_us, verifier, issued_us = row
    return ActiveGrant(
        request_id=RequestId(id_),
        user=UserName(user),
        target=TargetName(target),
        access_level=AccessLevelName(level),
        activated_at=from_us(activated_us),
        ends_at=from_us(ends_us),
        verifier=ScramVerifier.parse(verifier),
        credential_issued_at=from_us(issued_us),
    )


def request_to_row(request: AccessRequest) -> tuple[object, ...]:
    """The request's values in `REQUEST_COLUMNS` order (state first among the mutable ones)."""
    return (
        request.id,
        request.requester,
        request.target,
        request.access_level,
        request.requested_duration // _MICROSECOND,
        request.duration // _MICROSECOND,
        request.reason,
        request.state.value,
        to_us(request.created_at),
        _opt_to_us(request.activated_at),
        _opt_to_us(request.ends_at),
        _opt_to_us(request.closed_at),
        request.closed_by,
        request.close_reason,
    )
