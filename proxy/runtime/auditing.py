"""What goes into the audit log, and when: the glue between the proxy, the lifecycle and the sink.

- `SessionAuditor` is a `SessionObserver`: a session-start record before the client is told it
  is logged in (the log refuses → the session is refused: fail closed), one record per round trip
  (a simple Query, an extended-protocol batch) before the chunk holding it is forwarded, outcomes
  as answers come back — carried by the session's next record, or written on their own within
  `OUTCOME_DELAY` when none comes —, a session-end record. With `fsync: always` it returns the
  durability future of the last record, and the relay holds the client's data until that record
  is on disk.
- `LifecycleAuditor` turns the state store's transitions into request/grant/credential records,
  written ahead of the transaction's COMMIT (a record that cannot be written refuses the
  action), then one `lifecycle.outcome` record saying whether the COMMIT took effect.
- `SecretsToRedact` remembers the temporary passwords pgwarden handed out while their grants may
  still be used, so that a password pasted into a query never reaches the log.

A record that cannot be written raises `AuditUnavailable` (a PgwardenError): for a session or a
query, and for a lifecycle action, that means refusal; for ends of sessions, which describe what
already happened, it is logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from datetime import datetime, timedelta
from pathlib import Path

from proxy.audit import AuditLog, AuditUnavailable, SessionEnded, SessionStarted
from proxy.audit.events import (
    AuditEvent,
    CredentialIssued,
    GrantActivated,
    GrantExpired,
    GrantRevoked,
    LifecycleOutcome,
    LoginFailed,
    LongSession,
    RequestApproved,
    RequestCancelled,
    RequestCreated,
    RequestDenied,
    RequestLapsed,
)
from proxy.audit.query_events import CopyDirection
from proxy.audit.recorder import CLIENT_TYPES, UPSTREAM_TYPES, SessionRecorder, Written
from proxy.audit.redact import Redactor
from proxy.audit.shaping import QueryLimits, Shaper
from proxy.audit.sink_state import SinkOptions
from proxy.clock import Clock
from proxy.config import AuditSettings, FsyncPolicy
from proxy.grants.lifecycle import NotAudited
from proxy.grants.requests import AccessRequest, Action, IssuedCredential, Transition
from proxy.grants.store import StoreTx
from proxy.policy.models import Policy
from proxy.session.observer import LoginFailure, SessionObserver
from proxy.session.session import Ending, Session
from proxy.wire import Frame

log = logging.getLogger(__name__)

# Temporary passwords remembered for redaction; far more than are live at once on any server.
MAX_REMEMBERED_SECRETS = 10_000
# How long a query's outcome may wait in memory for the session's next record (see `_later`): the
# most that a crash of pgwarden itself could take from the log (queries are written at once).
OUTCOME_DELAY = 0.01
# How long a lifecycle action waits for its records' fsync (`fsync: always`) before it is refused.
LIFECYCLE_DURABLE_TIMEOUT = 5.0


class SecretsToRedact:
    """pgwarden's own live temporary passwords, for the redactor (thread-safe, bounded)."""

    def __init__(self) -> None:
        self._secrets: OrderedDict[str, datetime] = OrderedDict()
        self._lock = threading.Lock()
        self._snapshot: tuple[str, ...] = ()

    def remember(self, credential: IssuedCredential, now: datetime) -> None:
        self.remember_password(credential.password, credential.expires_at, now)

    def remember_password(self, password: str, expires_at: datetime, now: datetime) -> None:
        if expires_at.tzinfo is None:  # refused before it is stored: it would break every prune
            raise ValueError("a secret's expiry needs its UTC offset")
        with self._lock:
            self._secrets[password] = expires_at
            for secret, expires in list(self._secrets.items()):
                if expires <= now or len(self._secrets) > MAX_REMEMBERED_SECRETS:
                    del self._secrets[secret]
            self._snapshot = tuple(self._secrets)

    def __call__(self) -> Iterable[str]:
        return self._snapshot

    def entries(self) -> list[tuple[str, datetime]]:
        """(password, expires at) of every remembered secret (handed to a starting worker)."""
        with self._lock:
            return list(self._secrets.items())


class SessionAuditor(SessionObserver):
    """Records sessions and their queries (see the module docstring)."""

    CLIENT_MESSAGES = CLIENT_TYPES
    UPSTREAM_MESSAGES = UPSTREAM_TYPES

    def __init__(
        self,
        audit: AuditLog,
        redactor: Redactor,
        limits: QueryLimits,
        fsync: FsyncPolicy,
        *,
        record_queries: bool = True,
    ) -> None:
        if not record_queries:  # sessions only: the relay then hands us no message at all
            self.CLIENT_MESSAGES = self.UPSTREAM_MESSAGES = frozenset()
        self._audit = audit
        self._shaper = Shaper(redactor, limits)  # one per event loop: its caches serve them all
        self._wait_durable = fsync is FsyncPolicy.ALWAYS
        self._recorders: dict[str, SessionRecorder] = {}
        # Recorders whose outcomes wait (see `_later`): since the last tick, and before it.
        self._fresh: dict[SessionRecorder, None] = {}
        self._aged: dict[SessionRecorder, None] = {}
        self._ticking = False

    def login_failed(
        self, user: str, target: str, source: str, reason: LoginFailure, detail: str
    ) -> None:
        self._quietly([LoginFailed(user, target, source, reason.value, detail)])

    def session_started(self, session: Session) -> Future[None] | None:
        ticket = self._audit.append(SessionStarted.of(session.info))  # raises: fail closed
        # With fsync `always` the client is told it is logged in only once this is on disk.
        return self._audit.durable(ticket) if self._wait_durable else None

    def _recorder(self, session: Session) -> SessionRecorder:
        """The session's query recorder, made at its first message (a refused login has none)."""
        recorder = self._recorders.get(session.session_id)
        if recorder is None:
            relay = session.relay

            def copy_bytes(direction: CopyDirection) -> int:
                if direction is CopyDirection.IN:
                    return relay.copy_bytes_from_client
                return relay.copy_bytes_to_client

            recorder = SessionRecorder(
                session.session_id, self._shaper, session.monotonic, copy_bytes
            )
            self._recorders[session.session_id] = recorder
        return recorder

    def client_frames(self, session: Session, frames: list[Frame]) -> Future[None] | None:
        recorder = self._recorder(session)
        records = recorder.client_frames(frames)
        if not records:
            return None
        # The first record carries what waited: nothing of this session waits any more.
        self._fresh.pop(recorder, None)
        self._aged.pop(recorder, None)
        ticket = self._write(records)  # raises: the query is refused
        return self._audit.durable(ticket) if self._wait_durable else None

    def upstream_frames(self, session: Session, frames: list[Frame]) -> None:
        recorder = self._recorder(session)
        if not recorder.upstream_frames(frames):
            return
        if recorder.full:  # a long pipeline's outcomes: written now, not held in memory
            self._quietly(recorder.take_waiting())
        elif recorder not in self._aged:
            self._later(recorder)

    def session_ended(self, session: Session, ending: Ending) -> None:
        recorder = self._recorders.pop(session.session_id, None)
        records: list[Written] = []
        if recorder is not None:
            self._fresh.pop(recorder, None)
            self._aged.pop(recorder, None)
            records = recorder.finish()
        records.append(
            SessionEnded(
                session.session_id, ending.reason.value, ending.detail,
                timedelta(seconds=session.monotonic() - session.started),
                session.relay.bytes_from_client, session.relay.bytes_from_upstream,
                recorder.queries if recorder is not None else 0,
            )
        )  # fmt: skip
        self._quietly(records)

    def flush(self) -> None:
        """Write the outcomes still waiting (the server calls this before closing the log)."""
        waiting = [*self._aged, *self._fresh]
        self._aged, self._fresh = {}, {}
        self._quietly([record for recorder in waiting for record in recorder.take_waiting()])

    def _later(self, recorder: SessionRecorder) -> None:
        """Outcomes describe what already happened: they need not hold up the relay. They wait
        for the session's next record, which carries them, so that a round trip costs one record.
        A timer ticks every OUTCOME_DELAY / 2 while any wait, and writes those of the sessions
        that were already waiting at the previous tick: none waits longer than OUTCOME_DELAY."""
        self._fresh[recorder] = None
        if self._ticking:
            return
        try:
            asyncio.get_running_loop().call_later(OUTCOME_DELAY / 2, self._tick)
        except RuntimeError:  # no event loop (a tool or a test driving the auditor directly)
            self.flush()
        else:
            self._ticking = True

    def _tick(self) -> None:
        due, self._aged, self._fresh = self._aged, self._fresh, {}
        self._quietly([record for recorder in due for record in recorder.take_waiting()])
        self._ticking = False
        if self._aged:
            self._ticking = True
            asyncio.get_running_loop().call_later(OUTCOME_DELAY / 2, self._tick)

    def _write(self, records: list[Written]) -> int:
        try:
            return self._audit.append_many(records)
        except AuditUnavailable as exc:
            kinds = ", ".join(record.kind for record in records[:10])
            log.error("audit records not written (%s): %s", exc.detail or exc.message, kinds)
            raise exc from None

    def long_session(self, session: Session, threshold: float) -> None:
        info = session.info
        open_for = timedelta(seconds=session.monotonic() - session.started)
        self._quietly([LongSession(info.session_id, info.user, info.target, open_for,
                                   timedelta(seconds=threshold))])  # fmt: skip

    def _quietly(self, records: list[Written]) -> None:
        """Records of what already happened: a failure is logged (and counted by the sink)."""
        if records:
            with contextlib.suppress(AuditUnavailable):  # _write has logged it
                self._write(records)


class LifecycleAuditor:
    """Store transitions → audit records, written ahead of the state-store commit.

    `before_commit` runs inside the write transaction, before COMMIT: it writes the records of
    the transaction's transitions and, with fsync `always`, waits until they are on disk. If they
    cannot be written it raises `NotAudited` and the transaction rolls back: no action takes
    effect unrecorded (the API answers 503). Then one `lifecycle.outcome` record follows the
    COMMIT (`committed: true`), or its failure (`committed: false` with the error), naming the
    seqs it settles. A crash between the two leaves records with no outcome: written just before
    pgwarden stopped, not known to have taken effect (`audit verify` counts them)."""

    def __init__(
        self, audit: AuditLog, policy: Callable[[], Policy], *, wait_durable: bool
    ) -> None:
        self._audit = audit
        self._policy = policy
        self._wait_durable = wait_durable
        self._written = threading.local()  # (first seq, last seq) between before and after

    def before_commit(self, tx: StoreTx, transitions: list[Transition]) -> None:
        events = [self._event(transition, tx) for transition in transitions]
        try:
            last = self._audit.append_many(events)
            if self._wait_durable:
                self._audit.durable(last).result(LIFECYCLE_DURABLE_TIMEOUT)
        except (AuditUnavailable, TimeoutError) as exc:
            kinds = ", ".join(event.kind for event in events)
            log.error("refused (%s): the audit log cannot record it: %s", kinds, exc)
            raise NotAudited(
                "the audit log cannot be written; requests, approvals, credentials and "
                "revocations are refused until it can (to end a session now: pgwarden kill)"
            ) from None
        self._written.seqs = (last - len(events) + 1, last)  # one write: consecutive seqs

    def committed(self, transitions: list[Transition]) -> None:
        self._outcome(committed=True, error="")

    def aborted(self, transitions: list[Transition], exc: BaseException) -> None:
        self._outcome(committed=False, error=str(exc) or type(exc).__name__)

    def _outcome(self, *, committed: bool, error: str) -> None:
        first, last = getattr(self._written, "seqs", (0, 0))
        self._written.seqs = (0, 0)
        if last:
            try:
                self._audit.append(LifecycleOutcome(first, last, committed, error))
            except AuditUnavailable as exc:  # the sink has logged and counted it
                log.error("outcome of audit records %d-%d not recorded: %s", first, last, exc)

    def _event(self, t: Transition, tx: StoreTx) -> AuditEvent:
        request = tx.get_request(t.request_id)
        assert request is not None  # the transaction has just written it
        if t.action is Action.APPROVE:
            target = self._policy().targets.get(request.target)
            need = target.approval_for(request.access_level).required_approvals if target else 0
            return RequestApproved(request.id, t.actor, t.why, len(tx.approvals(request.id)), need)
        return _BUILDERS[t.action](request, t)


def _created(r: AccessRequest, t: Transition) -> AuditEvent:
    return RequestCreated(
        r.id, r.requester, r.target, r.access_level, r.requested_duration, r.duration, r.reason
    )


def _activated(r: AccessRequest, t: Transition) -> AuditEvent:
    activated, ends = r.activated_at or t.at, r.ends_at or t.at
    return GrantActivated(r.id, r.requester, r.target, r.access_level, activated, ends, t.actor)


# Every action but APPROVE (which needs the approval count) → its record.
_BUILDERS: dict[Action, Callable[[AccessRequest, Transition], AuditEvent]] = {
    Action.CREATE: _created,
    Action.ACTIVATE: _activated,
    Action.DENY: lambda r, t: RequestDenied(r.id, t.actor, t.why),
    Action.CANCEL: lambda r, t: RequestCancelled(r.id, t.actor, t.why),
    Action.LAPSE: lambda r, t: RequestLapsed(r.id, t.why),
    Action.ISSUE_CREDENTIAL: lambda r, t: CredentialIssued(r.id, r.requester, r.ends_at or t.at),
    Action.EXPIRE: lambda r, t: GrantExpired(r.id, r.requester, r.target, t.at),
    Action.REVOKE: lambda r, t: GrantRevoked(r.id, t.actor, t.why),
}


def open_audit_log(
    settings: AuditSettings, key: bytes, path: Path, clock: Clock, secrets: SecretsToRedact
) -> AuditLog:
    """The server's audit log, per the config, chained with `key`; AuditUnavailable if not.
    Its directory must exist (`startup.py` checked it: pgwarden creates no directories)."""
    options = SinkOptions(
        fsync=settings.fsync,
        fsync_interval=settings.fsync_interval.total_seconds(),
        max_file_bytes=settings.max_file_bytes,
    )
    return AuditLog(path, key, clock=clock, options=options, redactor=Redactor(secrets))


def query_limits(settings: AuditSettings) -> QueryLimits:
    return QueryLimits(settings.max_query_bytes, settings.max_param_bytes)
