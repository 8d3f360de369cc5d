"""The tamper-evident audit log: who had access to what and why, what they ran, and proof that
the record is whole.

- `events.py`: typed events (requests, grants, credentials, logins, sessions);
- `query_events.py`: the query records, one per client round trip, and their outcomes;
- `recorder.py`: one session's wire messages → query records; `shaping.py`: their text and
  values redacted, cut and encoded, once per distinct statement;
- `redact.py`: secrets out (PASSWORD literals, verifiers, conninfo, pgwarden's own passwords);
- `records.py`: the line format, the HMAC chain, file names, the head;
- `log.py` (+ `sink_state.py`, `recovery.py`, `fsio.py`): the sink — group-commit fsync,
  rotation, crash recovery, fail closed;
- `verify.py` (+ `verify_plan.py`, `lifecycle_trail.py`, `query_trail.py`): `pgwarden audit
  verify`;
- `archive.py` (the signed anchor) and `archiving.py`: `pgwarden audit archive`, which moves old
  rotated files away so that the rest still verifies on its own;
- `transcript.py` (+ `transcript_entries.py`, `line_scan.py`): a session's statements and
  outcomes read back, and a grant's sessions, for the web console.

This package does no networking and imports no asyncio: the sink is thread-based, and its
durability futures are `concurrent.futures.Future`s that async code awaits with
`asyncio.wrap_future`.
"""

from __future__ import annotations

from proxy.audit.encode import EncodedRecord
from proxy.audit.events import (
    AuditEvent,
    CredentialIssued,
    GrantActivated,
    GrantExpired,
    GrantRevoked,
    LoginFailed,
    LongSession,
    Recovery,
    RequestApproved,
    RequestCancelled,
    RequestCreated,
    RequestDenied,
    RequestLapsed,
    SessionEnded,
    SessionStarted,
)
from proxy.audit.log import AuditLog
from proxy.audit.query_events import CopyDirection, CopyTransfer, OutcomeStatus
from proxy.audit.recorder import CLIENT_TYPES, UPSTREAM_TYPES, SessionRecorder
from proxy.audit.records import load_key
from proxy.audit.redact import Redactor
from proxy.audit.shaping import QueryLimits, Shaper
from proxy.audit.sink_state import AuditUnavailable, SinkOptions
from proxy.audit.verify import VerifyReport, verify
from proxy.config import FsyncPolicy

__all__ = [
    "CLIENT_TYPES",
    "UPSTREAM_TYPES",
    "AuditEvent",
    "AuditLog",
    "AuditUnavailable",
    "CopyDirection",
    "CopyTransfer",
    "CredentialIssued",
    "EncodedRecord",
    "FsyncPolicy",
    "GrantActivated",
    "GrantExpired",
    "GrantRevoked",
    "LoginFailed",
    "LongSession",
    "OutcomeStatus",
    "QueryLimits",
    "Recovery",
    "Redactor",
    "RequestApproved",
    "RequestCancelled",
    "RequestCreated",
    "RequestDenied",
    "RequestLapsed",
    "SessionEnded",
    "SessionRecorder",
    "SessionStarted",
    "Shaper",
    "SinkOptions",
    "VerifyReport",
    "load_key",
    "verify",
]
