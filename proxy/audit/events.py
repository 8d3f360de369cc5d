"""Audit events: what happened, as typed values (STYLE 12), never as log lines.

Every event is a frozen dataclass with a stable `kind` (`request.created`, `session.started`,
`query.copy`, ...) and `to_record()`, which turns its fields into JSON values: datetimes become
ISO-8601 UTC strings, durations seconds, enums their value, tuples lists. The sink (`log.py`) adds
the envelope (`seq`, `ts`, `kind`, `prev`, `mac`), redacts and writes. Field names never collide
with the envelope's (a test checks every event class).

The query records (`query.*`) are described in `query_events.py`. The `audit.*` events here are the
sink's own: opened, closed, a new file continuing the chain, and what a recovery found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar, Protocol

from proxy.audit.records import Fields, JSONValue, format_ts


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """Base of every event; subclasses set `kind` and declare their fields."""

    kind: ClassVar[str] = ""

    def to_record(self) -> Fields:
        return {f.name: to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}


def to_json(value: object) -> JSONValue:
    if value is None or isinstance(value, bool | int | float | str):
        return value  # StrEnum members are strs: they serialise as their value
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, tuple | list):
        return [to_json(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    shaped = getattr(value, "to_json", None)  # a value that says how it is recorded
    if callable(shaped):
        result: JSONValue = shaped()
        return result
    raise TypeError(f"cannot record a {type(value).__name__} in the audit log")


# -- requests, grants, credentials ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestCreated(AuditEvent):
    kind: ClassVar[str] = "request.created"
    request_id: str
    requester: str
    target: str
    access_level: str
    requested_duration: timedelta
    duration: timedelta  # after clamping to the policy's maximum
    reason: str


@dataclass(frozen=True, slots=True)
class RequestApproved(AuditEvent):
    """One approval (the request stays pending until `approvals` reaches `required`)."""

    kind: ClassVar[str] = "request.approved"
    request_id: str
    approver: str
    comment: str
    approvals: int
    required: int


@dataclass(frozen=True, slots=True)
class RequestDenied(AuditEvent):
    kind: ClassVar[str] = "request.denied"
    request_id: str
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class RequestCancelled(AuditEvent):
    kind: ClassVar[str] = "request.cancelled"
    request_id: str
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class RequestLapsed(AuditEvent):
    """Nobody approved in time."""

    kind: ClassVar[str] = "request.lapsed"
    request_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class GrantActivated(AuditEvent):
    kind: ClassVar[str] = "grant.activated"
    grant_id: str
    user: str
    target: str
    access_level: str
    activated_at: datetime
    ends_at: datetime
    actor: str  # the last approver, or pgwarden for an auto-approval rule


@dataclass(frozen=True, slots=True)
class GrantExpired(AuditEvent):
    kind: ClassVar[str] = "grant.expired"
    grant_id: str
    user: str
    target: str
    ended_at: datetime


@dataclass(frozen=True, slots=True)
class GrantRevoked(AuditEvent):
    kind: ClassVar[str] = "grant.revoked"
    grant_id: str
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class TokenCreated(AuditEvent):
    """An API token was made for `user` on the server host (`pgwarden token create`), by the OS
    user `by`; the record never holds the secret, only the token's public id."""

    kind: ClassVar[str] = "token.created"
    token_id: str
    user: str
    by: str


@dataclass(frozen=True, slots=True)
class TokenRevoked(AuditEvent):
    kind: ClassVar[str] = "token.revoked"
    token_id: str
    by: str


@dataclass(frozen=True, slots=True)
class StateMigrated(AuditEvent):
    """A SQLite state file was copied into a PostgreSQL store (`pgwarden store migrate`) by the
    OS user `by`; `target` names the database and schema, never a user or password."""

    kind: ClassVar[str] = "state.migrated"
    source: str
    target: str
    requests: int
    api_tokens: int
    by: str


@dataclass(frozen=True, slots=True)
class LifecycleOutcome(AuditEvent):
    """Whether the lifecycle records `first_seq`..`last_seq`, written before their state-store
    commit (write-ahead), took effect. A run of lifecycle records with no outcome after it was
    written just before pgwarden stopped: it is not known to have taken effect."""

    kind: ClassVar[str] = "lifecycle.outcome"
    first_seq: int
    last_seq: int
    committed: bool
    error: str


@dataclass(frozen=True, slots=True)
class CredentialIssued(AuditEvent):
    """A temporary password was shown to its owner; the record never holds the secret."""

    kind: ClassVar[str] = "credential.issued"
    grant_id: str
    user: str
    expires_at: datetime


# -- single sign-on (proxy/identity) ----------------------------------------------------------
# A session is named by its public id (`ses_` + a prefix of its token's digest), never its token.


@dataclass(frozen=True, slots=True)
class PersonSignedIn(AuditEvent):
    """`user` (the provider's `subject` at `issuer`) signed in, or refreshed (`method`: device,
    browser or refresh), with the provider's `groups`; `replaced`: the sessions a refresh ended."""

    kind: ClassVar[str] = "identity.signed_in"
    user: str
    issuer: str
    subject: str
    groups: tuple[str, ...]
    method: str
    session: str
    expires_at: datetime
    replaced: int = 0


@dataclass(frozen=True, slots=True)
class PersonSignedOut(AuditEvent):
    kind: ClassVar[str] = "identity.signed_out"
    user: str
    session: str
    refresh_token_revoked: bool  # the provider's refresh token was sent along to be revoked


@dataclass(frozen=True, slots=True)
class SignInRefusal(AuditEvent):
    """A sign-in step refused (`reason`: the metric's label); `user` when it is known."""

    kind: ClassVar[str] = "identity.sign_in_refused"
    method: str
    reason: str
    issuer: str
    user: str
    detail: str


@dataclass(frozen=True, slots=True)
class PersonRemoved(AuditEvent):
    """The provider said `user`'s account is gone: their sessions end, and their grants
    (revoked by `<identity>`, in their own records)."""

    kind: ClassVar[str] = "identity.person_removed"
    user: str
    issuer: str
    subject: str
    evidence: str


# -- logins and sessions -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginFailed(AuditEvent):
    """`reason` is internal (the client saw the same 28P01 whatever it was)."""

    kind: ClassVar[str] = "login.failed"
    user: str
    target: str
    client_address: str
    reason: str
    detail: str = ""


class SessionFacts(Protocol):
    """What `proxy.session.session.SessionInfo` offers (named here so that audit imports no
    network code)."""

    @property
    def session_id(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def access_level(self) -> str: ...
    @property
    def grant_id(self) -> str: ...
    @property
    def upstream_role(self) -> str: ...
    @property
    def client_address(self) -> str: ...
    @property
    def client_tls(self) -> bool: ...
    @property
    def application_name(self) -> str: ...
    @property
    def started_at(self) -> datetime: ...
    @property
    def grant_ends_at(self) -> datetime: ...
    @property
    def backend_process_id(self) -> int: ...


@dataclass(frozen=True, slots=True)
class SessionStarted(AuditEvent):
    kind: ClassVar[str] = "session.started"
    session_id: str
    grant_id: str
    user: str
    target: str
    access_level: str
    upstream_role: str
    client_address: str
    client_tls: bool
    application_name: str
    started_at: datetime
    grant_ends_at: datetime
    backend_process_id: int

    @classmethod
    def of(cls, info: SessionFacts) -> SessionStarted:
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: getattr(info, name) for name in names})


@dataclass(frozen=True, slots=True)
class SessionEnded(AuditEvent):
    kind: ClassVar[str] = "session.ended"
    session_id: str
    reason: str  # an EndReason value
    detail: str
    duration: timedelta
    bytes_from_client: int
    bytes_to_client: int
    queries: int


@dataclass(frozen=True, slots=True)
class LongSession(AuditEvent):
    kind: ClassVar[str] = "session.long"
    session_id: str
    user: str
    target: str
    open_for: timedelta
    threshold: timedelta


@dataclass(frozen=True, slots=True)
class WorkerStarted(AuditEvent):
    """The primary started worker process `worker` (`proxy.workers`), which writes its own chain
    to `audit_file`; `pgwarden audit verify --config` then requires that chain to exist."""

    kind: ClassVar[str] = "worker.started"
    worker: int
    pid: int
    audit_file: str


@dataclass(frozen=True, slots=True)
class StateCreated(AuditEvent):
    """The server made a new, empty state store at `file`: on its first start, or, when
    `earlier_life`, with `--new-state` after the earlier one was lost (its grants and API tokens
    are not in the new one; its records stay in this log)."""

    kind: ClassVar[str] = "state.created"
    file: str
    earlier_life: bool


@dataclass(frozen=True, slots=True)
class OrphanBackendEnded(AuditEvent):
    """At start, pgwarden terminated backend `backend_process_id` of `target`: a previous run
    left it behind (a crash), running as the mapped `role` (proxy/upstream/orphans.py)."""

    kind: ClassVar[str] = "backend.orphan_ended"
    target: str
    role: str
    backend_process_id: int
    application_name: str


# -- the sink's own records --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogOpened(AuditEvent):
    kind: ClassVar[str] = "audit.opened"
    format: int
    file: str
    software: str


@dataclass(frozen=True, slots=True)
class LogClosed(AuditEvent):
    kind: ClassVar[str] = "audit.closed"


@dataclass(frozen=True, slots=True)
class ChainContinues(AuditEvent):
    """The first record of every file after the first: `prev` is the previous file's last."""

    kind: ClassVar[str] = "audit.chain_continues"
    previous_file: str


@dataclass(frozen=True, slots=True)
class Recovery(AuditEvent):
    """What opening (or resuming after a write error) found; `torn_*` describe bytes cut from
    the end of `file` (a record cut short by a crash), `lost_*` records the head anchored that
    are gone, `unacknowledged_after` the records whose durability was never confirmed."""

    kind: ClassVar[str] = "audit.recovery"
    reason: str
    file: str
    last_seq: int
    torn_offset: int | None = None
    torn_bytes: int = 0
    torn_sha256: str | None = None
    torn_head_base64: str | None = None
    lost_from_seq: int | None = None
    lost_to_seq: int | None = None
    unacknowledged_after: int | None = None
    notes: tuple[str, ...] = ()
