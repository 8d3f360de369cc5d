"""Single sign-on's part of the state store: API sessions, people, sign-in flows.

- `api_sessions`: one row per pgwarden session a sign-in made: only the SHA-256 digest of its
  token (like `api_tokens`), who it is, the groups read at sign-in, when it ends, if revoked.
- `people`: each person an identity provider signed in, by user name: their issuer and subject
  (one subject per name: a name is never handed to another subject), email, groups, when last
  read, and when the provider said the account is gone (`removed_at`; a new sign-in clears
  it). Together with the YAML policy this is the effective policy (`proxy/identity/people.py`).
- `sign_in_flows`: a device or browser flow in progress, so that any replica can finish what
  another started: by the digest of its id, with the secrets the provider is asked with (state,
  nonce, PKCE verifier, device code); `used_at` makes each flow finish once.

People writes move the change counter: they change who may do what, and every replica's cached
effective policy follows the counter. Session and flow writes do not: a session is looked up in
the store at every API call anyway, and a flow changes nothing anyone may do.

The tables are made by `store_identity_schema.py`; `IdentitySql` is mixed into `SqliteTx`
(store_sql.py), so both stores run these statements.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from proxy.grants.store_schema import from_us, to_us
from proxy.policy.models import GroupName, UserName

SESSION_COLUMNS: Final = (
    "digest, user_name, groups, issuer, subject, issued_us, expires_us, revoked_us, refresh_digest"
)
PERSON_COLUMNS: Final = "user_name, issuer, subject, email, groups, updated_us, removed_us"
FLOW_COLUMNS: Final = (
    "digest, kind, state, nonce, verifier, device_code, redirect_uri, created_us, expires_us, "
    "used_us"
)


@dataclass(frozen=True, slots=True)
class ApiSession:
    """A pgwarden API session as stored: never its token, only the token's digest."""

    digest: bytes = field(repr=False)
    user: UserName
    groups: tuple[GroupName, ...]
    issuer: str
    subject: str
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
    # SHA-256 of the provider's refresh token given with this session (never the token): a
    # refresh with that token continues this sign-in, so this session ends (one per chain).
    refresh_digest: bytes | None = field(default=None, repr=False)

    @property
    def public_id(self) -> str:
        """What the audit log names a session by: a prefix of its digest, never its token."""
        return "ses_" + self.digest[:8].hex()


@dataclass(frozen=True, slots=True)
class PersonRecord:
    """A person as their identity provider last described them."""

    user: UserName
    issuer: str
    subject: str
    email: str | None
    groups: tuple[GroupName, ...]
    updated_at: datetime
    removed_at: datetime | None = None  # the provider said the account is gone (signin.py)


@dataclass(frozen=True, slots=True)
class SignInFlow:
    """A sign-in in progress; the secrets in it go to the provider, never to the caller."""

    digest: bytes = field(repr=False)
    kind: str  # "device" | "browser"
    created_at: datetime
    expires_at: datetime
    state: str | None = field(default=None, repr=False)
    nonce: str | None = field(default=None, repr=False)
    verifier: str | None = field(default=None, repr=False)
    device_code: str | None = field(default=None, repr=False)
    redirect_uri: str | None = None
    used_at: datetime | None = None


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def __iter__(self) -> Iterator[Any]: ...


class _Connection(Protocol):
    def execute(self, sql: str, parameters: Any = ..., /) -> _Cursor: ...


class IdentitySql:
    """The statements; the host class (`SqliteTx`) provides `_conn` and `_write`."""

    _conn: _Connection

    def _write(self, sql: str, params: tuple[object, ...], *, counts: bool = True) -> int:
        raise NotImplementedError  # SqliteTx's

    # --- sessions ------------------------------------------------------------------------

    def insert_api_session(self, session: ApiSession) -> None:
        self._write(
            f"INSERT INTO api_sessions ({SESSION_COLUMNS}) "  # noqa: S608 constant columns
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (session.digest, session.user, _groups_text(session.groups), session.issuer,
             session.subject, to_us(session.issued_at), to_us(session.expires_at), None,
             session.refresh_digest),
            counts=False,
        )  # fmt: skip

    def api_session(self, digest: bytes) -> ApiSession | None:
        sql = f"SELECT {SESSION_COLUMNS} FROM api_sessions WHERE digest = ?"  # noqa: S608
        row = self._conn.execute(sql, (digest,)).fetchone()
        return None if row is None else _session_from_row(row)

    def revoke_api_session(self, digest: bytes, at: datetime) -> bool:
        changed = self._write(
            "UPDATE api_sessions SET revoked_us = ? WHERE digest = ? AND revoked_us IS NULL",
            (to_us(at), digest), counts=False,
        )  # fmt: skip
        return changed == 1

    def session_by_refresh(self, refresh_digest: bytes) -> ApiSession | None:
        """The latest session given with this refresh token, if any is still stored."""
        sql = (f"SELECT {SESSION_COLUMNS} FROM api_sessions WHERE refresh_digest = ? "  # noqa: S608
               "ORDER BY issued_us DESC LIMIT 1")  # fmt: skip
        row = self._conn.execute(sql, (refresh_digest,)).fetchone()
        return None if row is None else _session_from_row(row)

    def revoke_refresh_chain(self, refresh_digest: bytes, at: datetime) -> int:
        """End the live sessions given with this refresh token (a refresh replaces them)."""
        return self._write(
            "UPDATE api_sessions SET revoked_us = ? WHERE refresh_digest = ? "
            "AND revoked_us IS NULL AND expires_us > ?",
            (to_us(at), refresh_digest, to_us(at)), counts=False,
        )  # fmt: skip

    def revoke_sessions_of(self, issuer: str, subject: str, at: datetime) -> int:
        """End every live session of one account (the provider said it is gone)."""
        return self._write(
            "UPDATE api_sessions SET revoked_us = ? WHERE issuer = ? AND subject = ? "
            "AND revoked_us IS NULL AND expires_us > ?",
            (to_us(at), issuer, subject, to_us(at)), counts=False,
        )  # fmt: skip

    def prune_api_sessions(self, before: datetime) -> int:
        """Forget sessions that ended (expired or revoked) before `before`; how many."""
        return self._write(
            "DELETE FROM api_sessions WHERE expires_us < ? OR revoked_us < ?",
            (to_us(before), to_us(before)), counts=False,
        )  # fmt: skip

    # --- people --------------------------------------------------------------------------

    def person(self, user: UserName) -> PersonRecord | None:
        sql = f"SELECT {PERSON_COLUMNS} FROM people WHERE user_name = ?"  # noqa: S608
        row = self._conn.execute(sql, (user,)).fetchone()
        return None if row is None else _person_from_row(row)

    def person_by_subject(self, issuer: str, subject: str) -> PersonRecord | None:
        sql = f"SELECT {PERSON_COLUMNS} FROM people WHERE issuer = ? AND subject = ?"  # noqa: S608
        row = self._conn.execute(sql, (issuer, subject)).fetchone()
        return None if row is None else _person_from_row(row)

    def people(self) -> tuple[PersonRecord, ...]:
        sql = f"SELECT {PERSON_COLUMNS} FROM people ORDER BY user_name"  # noqa: S608
        return tuple(_person_from_row(row) for row in self._conn.execute(sql))

    def put_person(self, person: PersonRecord) -> None:
        """Insert or replace `person` (by user name); the caller checked the subject first."""
        self._write(
            f"INSERT INTO people ({PERSON_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
            "ON CONFLICT (user_name) DO UPDATE SET issuer = excluded.issuer, "
            "subject = excluded.subject, email = excluded.email, groups = excluded.groups, "
            "updated_us = excluded.updated_us, removed_us = excluded.removed_us",
            (person.user, person.issuer, person.subject, person.email,
             _groups_text(person.groups), to_us(person.updated_at), _us(person.removed_at)),
        )  # fmt: skip

    def remove_person(self, user: UserName, at: datetime) -> bool:
        """Mark `user` gone at their provider (moves the change counter: policies follow)."""
        changed = self._write(
            "UPDATE people SET removed_us = ?, updated_us = ? WHERE user_name = ? "
            "AND removed_us IS NULL",
            (to_us(at), to_us(at), user),
        )  # fmt: skip
        return changed == 1

    # --- flows ---------------------------------------------------------------------------

    def insert_sign_in_flow(self, flow: SignInFlow) -> None:
        self._write(
            f"INSERT INTO sign_in_flows ({FLOW_COLUMNS}) "  # noqa: S608 constant columns
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (flow.digest, flow.kind, flow.state, flow.nonce, flow.verifier, flow.device_code,
             flow.redirect_uri, to_us(flow.created_at), to_us(flow.expires_at), None),
            counts=False,
        )  # fmt: skip

    def sign_in_flow(self, digest: bytes) -> SignInFlow | None:
        sql = f"SELECT {FLOW_COLUMNS} FROM sign_in_flows WHERE digest = ?"  # noqa: S608
        row = self._conn.execute(sql, (digest,)).fetchone()
        return None if row is None else _flow_from_row(row)

    def use_sign_in_flow(self, digest: bytes, at: datetime) -> bool:
        """Mark a flow finished; False if it already was (a replay, or a concurrent finish)."""
        changed = self._write(
            "UPDATE sign_in_flows SET used_us = ? WHERE digest = ? AND used_us IS NULL",
            (to_us(at), digest), counts=False,
        )  # fmt: skip
        return changed == 1

    def pending_sign_in_flows(self, now: datetime) -> int:
        """Flows begun and neither finished nor expired at `now` (their number is capped)."""
        row = self._conn.execute(
            "SELECT count(*) FROM sign_in_flows WHERE used_us IS NULL AND expires_us >= ?",
            (to_us(now),),
        ).fetchone()
        return int(row[0]) if row is not None else 0

    def prune_sign_in_flows(self, before: datetime) -> int:
        return self._write(
            "DELETE FROM sign_in_flows WHERE expires_us < ?", (to_us(before),), counts=False
        )


def _groups_text(groups: tuple[GroupName, ...]) -> str:
    return json.dumps(list(groups))


def _groups_from(text: str) -> tuple[GroupName, ...]:
    return tuple(GroupName(g) for g in json.loads(text))


def _opt(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def _us(value: datetime | None) -> int | None:
    return None if value is None else to_us(value)


def _session_from_row(row: tuple[Any, ...]) -> ApiSession:
    digest, user, groups, issuer, subject, issued, expires, revoked, refresh = row
    return ApiSession(bytes(digest), UserName(user), _groups_from(groups), issuer, subject,
                      from_us(issued), from_us(expires), _opt(revoked),
                      None if refresh is None else bytes(refresh))  # fmt: skip


def _person_from_row(row: tuple[Any, ...]) -> PersonRecord:
    user, issuer, subject, email, groups, updated, removed = row
    return PersonRecord(UserName(user), issuer, subject, email, _groups_from(groups),
                        from_us(updated), _opt(removed))  # fmt: skip


def _flow_from_row(row: tuple[Any, ...]) -> SignInFlow:
    digest, kind, state, nonce, verifier, device_code, redirect, created, expires, used = row
    return SignInFlow(bytes(digest), kind, from_us(created), from_us(expires), state, nonce,
                      verifier, device_code, redirect, _opt(used))  # fmt: skip
