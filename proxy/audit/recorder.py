"""One session's queries as audit events: wire messages in, `query.*` events out.

The relay hands `client(message)` every observed client message *before* forwarding it and
writes the events it returns first (the query is on record before the database sees it); it
hands `upstream(message)` the database's answers, which complete the queries as `query.outcome`
events in protocol order. Every Query, Parse, Bind, Execute and FunctionCall gets the next
per-session number `n`; outcomes refer to it. Parse and Bind get an outcome only when they fail
(or are skipped); Query, Execute and FunctionCall always get one.

How answers are matched: the backend answers client messages in order, so the recorder keeps a
queue of what awaits an answer. An ErrorResponse in an extended-protocol batch makes the backend
skip everything up to the next Sync, whose ReadyForQuery ends the batch; the skipped queries get
`skipped` outcomes. A simple Query ends at its ReadyForQuery, with one tag per statement.

The recorder reads no clock: `monotonic` is the session clock's, for durations. Text is redacted
(`redact.py`) before it is cut at the configured size, so a cut can never expose half a secret.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from proxy.audit.events import AuditEvent
from proxy.audit.query_events import (
    BindPortal,
    CopyDirection,
    CopyTransfer,
    ExecutePortal,
    FunctionCalled,
    OutcomeStatus,
    Param,
    ParseStatement,
    QueryOutcome,
    SimpleQuery,
)
from proxy.audit.redact import MASK, Redactor, password_parameters
from proxy.wire import (
    BIND,
    BIND_COMPLETE,
    CLOSE,
    CLOSE_COMPLETE,
    COMMAND_COMPLETE,
    COPY_BOTH_RESPONSE,
    COPY_DATA,
    COPY_DONE,
    COPY_FAIL,
    COPY_IN_RESPONSE,
    COPY_OUT_RESPONSE,
    DESCRIBE,
    EMPTY_QUERY_RESPONSE,
    ERROR_RESPONSE,
    EXECUTE,
    FUNCTION_CALL,
    NO_DATA,
    PARSE,
    PARSE_COMPLETE,
    PORTAL_SUSPENDED,
    QUERY,
    READY_FOR_QUERY,
    ROW_DESCRIPTION,
    SYNC,
    Bind,
    BindComplete,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyInResponse,
    CopyOutResponse,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    Frame,
    FunctionCall,
    NoData,
    Parse,
    ParseComplete,
    PortalSuspended,
    Query,
    ReadyForQuery,
    RowDescription,
    Sync,
    decode_backend,
)

DEFAULT_MAX_TEXT_BYTES = 1024 * 1024  # query text kept whole up to here (a very large query)
DEFAULT_MAX_PARAM_BYTES = 1024  # each Bind value / FunctionCall argument shown up to here
_REDACT_MARGIN = 1024  # a value is redacted over this much beyond the cut, then cut

# The message types the recorder needs to see (for the relay's frame scanners).
CLIENT_TYPES = frozenset((
    QUERY, PARSE, BIND, EXECUTE, FUNCTION_CALL, SYNC, DESCRIBE, CLOSE,
    COPY_DATA, COPY_DONE, COPY_FAIL,
))  # fmt: skip
UPSTREAM_TYPES = frozenset((
    PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE, COMMAND_COMPLETE, EMPTY_QUERY_RESPONSE,
    ERROR_RESPONSE, READY_FOR_QUERY, NO_DATA, PORTAL_SUSPENDED, ROW_DESCRIPTION,
    COPY_IN_RESPONSE, COPY_OUT_RESPONSE, COPY_BOTH_RESPONSE, COPY_DATA, COPY_DONE,
))  # fmt: skip


@dataclass(frozen=True, slots=True)
class QueryLimits:
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    max_param_bytes: int = DEFAULT_MAX_PARAM_BYTES  # all values of one message together are
    # also held to max_text_bytes; values beyond it are counted as omitted


@dataclass(slots=True)
class _Pending:
    what: str  # simple, parse, bind, execute, function, describe, close, sync
    n: int | None
    started: float
    tags: list[str] = field(default_factory=list)
    error: ErrorResponse | None = None


class SessionRecorder:
    """Turns one session's protocol messages into query events (see the module docstring)."""

    def __init__(
        self,
        session_id: str,
        redactor: Redactor,
        monotonic: Callable[[], float],
        limits: QueryLimits = QueryLimits(),
        copy_bytes: Callable[[CopyDirection], int] | None = None,
    ) -> None:
        """`copy_bytes(direction)`, when given, is a running total of CopyData payload bytes in
        that direction, counted by the relay without copying the rows; the recorder then ignores
        CopyData messages (so the relay need not hand them over)."""
        self.session_id = session_id
        self.queries = 0  # Query, Execute and FunctionCall messages seen
        self._redactor = redactor
        self._monotonic = monotonic
        self._limits = limits
        self._n = 0
        self._pending: deque[_Pending] = deque()
        self._secret_statements: set[str] = set()
        self._copy: tuple[int, CopyDirection, list[int]] | None = None
        self._copy_bytes = copy_bytes
        self._copy_seen: dict[CopyDirection, int] = {}
        self._skipping = False

    # -- what the client sends -----------------------------------------------------------------

    def client(self, message: object) -> list[AuditEvent]:
        if isinstance(message, Query):
            n = self._expect("simple", counted=True)
            text, size, cut = self._text(message.query)
            return [SimpleQuery(self.session_id, n, text, size, cut)]
        if isinstance(message, Parse):
            n = self._expect("parse")
            if password_parameters(message.query):
                self._secret_statements.add(message.statement)
            else:
                self._secret_statements.discard(message.statement)
            text, size, cut = self._text(message.query)
            parsed = (message.statement, text, size, cut, message.param_types)
            return [ParseStatement(self.session_id, n, *parsed)]
        if isinstance(message, Bind):
            n = self._expect("bind")
            secret = message.statement in self._secret_statements
            params, omitted = self._params(message.param_formats, message.params, secret)
            names = (message.portal, message.statement)
            return [BindPortal(self.session_id, n, *names, params, omitted, secret)]
        if isinstance(message, Execute):
            n = self._expect("execute", counted=True)
            return [ExecutePortal(self.session_id, n, message.portal, message.max_rows)]
        if isinstance(message, FunctionCall):
            n = self._expect("function", counted=True)
            args, omitted = self._params(message.arg_formats, message.args, secret=False)
            return [FunctionCalled(self.session_id, n, message.function_oid, args, omitted)]
        if isinstance(message, Describe | Close | Sync):
            if isinstance(message, Close) and message.kind == "S":
                self._secret_statements.discard(message.name)
            what = {Describe: "describe", Close: "close", Sync: "sync"}[type(message)]
            self._pending.append(_Pending(what, None, self._monotonic()))
        elif isinstance(message, CopyData) and self._copy and self._copy[1] is CopyDirection.IN:
            self._copy[2][0] += len(message.data)
        return []

    def _expect(self, what: str, *, counted: bool = False) -> int:
        self._n += 1
        self.queries += counted
        self._pending.append(_Pending(what, self._n, self._monotonic()))
        return self._n

    # -- what the database answers -------------------------------------------------------------

    def upstream_frame(self, frame: Frame) -> list[AuditEvent]:
        """`upstream` for an undecoded message: decodes only the messages whose content matters
        here (every query is answered with a ReadyForQuery, most with a RowDescription)."""
        if frame.type == READY_FOR_QUERY:
            return self._ready()
        if frame.type == ROW_DESCRIPTION and not self._describing():
            return []
        return self.upstream(decode_backend(frame))

    def _describing(self) -> bool:
        return bool(self._pending) and self._pending[0].what == "describe" and not self._skipping

    def upstream(self, message: object) -> list[AuditEvent]:
        if isinstance(message, ReadyForQuery):
            return self._ready()
        if not self._pending or self._skipping:
            return []
        head = self._pending[0]
        if isinstance(message, ErrorResponse):
            return self._error(head, message)
        if isinstance(message, CommandComplete):
            head.tags.append(message.tag)
            events = self._end_copy()
            if head.what == "execute":
                events.append(self._finish(head, OutcomeStatus.OK))
            return events
        if head.what == "execute" and isinstance(message, EmptyQueryResponse | PortalSuspended):
            suspended = isinstance(message, PortalSuspended)
            return [self._finish(head, OutcomeStatus.SUSPENDED if suspended else OutcomeStatus.OK)]
        self._track(head, message)
        return []

    def _track(self, head: _Pending, message: object) -> None:
        """Answers that produce no event: COPY's start and data, completions of Parse, Bind,
        Close and Describe."""
        if isinstance(message, CopyInResponse | CopyOutResponse | CopyBothResponse):
            into = isinstance(message, CopyInResponse)
            if head.n is not None:
                direction = CopyDirection.IN if into else CopyDirection.OUT
                self._copy = (head.n, direction, [0])
        elif isinstance(message, CopyData) and self._copy and self._copy[1] is CopyDirection.OUT:
            self._copy[2][0] += len(message.data)
        elif isinstance(message, ParseComplete | BindComplete | CloseComplete) or (
            isinstance(message, RowDescription | NoData) and head.what == "describe"
        ):
            self._pending.popleft()

    def _error(self, head: _Pending, error: ErrorResponse) -> list[AuditEvent]:
        events = self._end_copy()
        if head.what == "sync":  # the implicit COMMIT at Sync failed: no query of ours to blame
            return events
        if head.what in ("simple", "function"):
            head.error = error  # ends at its ReadyForQuery
            return events
        self._pending.popleft()
        if head.n is not None:
            events.append(self._outcome(head, OutcomeStatus.ERROR, error))
        self._skipping = True  # the backend skips to the next Sync
        return events

    def _ready(self) -> list[AuditEvent]:
        self._skipping = False
        events = self._end_copy()
        while self._pending:
            head = self._pending.popleft()
            if head.what in ("sync", "simple", "function"):
                if head.what != "sync":
                    status = OutcomeStatus.ERROR if head.error else OutcomeStatus.OK
                    events.append(self._outcome(head, status, head.error))
                break
            if head.n is not None:
                events.append(self._outcome(head, OutcomeStatus.SKIPPED, None))
        return events

    def finish(self) -> list[AuditEvent]:
        """At the session's end: outcomes for what never got an answer."""
        events = self._end_copy()
        events += [
            self._outcome(p, OutcomeStatus.UNFINISHED, None)
            for p in self._pending
            if p.n is not None
        ]
        self._pending.clear()
        return events

    def _finish(self, head: _Pending, status: OutcomeStatus) -> QueryOutcome:
        self._pending.popleft()
        return self._outcome(head, status, None)

    def _outcome(
        self, pending: _Pending, status: OutcomeStatus, error: ErrorResponse | None
    ) -> QueryOutcome:
        assert pending.n is not None
        rows = [r for tag in pending.tags if (r := rows_of(tag)) is not None]
        return QueryOutcome(
            self.session_id,
            pending.n,
            status,
            tuple(pending.tags),
            sum(rows) if rows else None,
            error.sqlstate if error else None,
            error.message if error else None,
            timedelta(seconds=max(0.0, self._monotonic() - pending.started)),
        )

    def _end_copy(self) -> list[AuditEvent]:
        if self._copy is None:
            return []
        n, direction, counted = self._copy
        self._copy = None
        if self._copy_bytes is not None:
            # CopyData flows only inside a COPY, so what the relay counted since the previous
            # COPY ended is this COPY's data (the relay counts whole chunks, so the total at
            # this COPY's start could already include some of its rows).
            total = self._copy_bytes(direction)
            counted[0] = total - self._copy_seen.get(direction, 0)
            self._copy_seen[direction] = total
        return [CopyTransfer(self.session_id, n, direction, counted[0])]

    # -- shaping values ------------------------------------------------------------------------

    def _text(self, text: str) -> tuple[str, int, bool]:
        limit = self._limits.max_text_bytes
        whole = len(text) <= limit + _REDACT_MARGIN
        redacted = self._redactor.redact(text if whole else text[: limit + _REDACT_MARGIN])
        raw = redacted.encode("utf-8", "surrogateescape")
        if whole and len(raw) <= limit:
            return redacted, len(raw), False
        size = len(raw) if whole else len(text.encode("utf-8", "surrogateescape"))
        return _decode(raw[:limit]), size, True

    def _params(
        self, formats: tuple[int, ...], values: tuple[bytes | None, ...], secret: bool
    ) -> tuple[tuple[Param, ...], int]:
        budget = self._limits.max_text_bytes
        shown: list[Param] = []
        for index, value in enumerate(values):
            if budget <= 0:
                return tuple(shown), len(values) - index
            binary = (formats[0] if len(formats) == 1 else formats[index] if formats else 0) == 1
            param = self._param(value, binary, secret)
            budget -= len(param.value or "")
            shown.append(param)
        return tuple(shown), 0

    def _param(self, value: bytes | None, binary: bool, secret: bool) -> Param:
        if value is None:
            return Param(None)
        limit = self._limits.max_param_bytes
        if secret or (binary and self._redactor.contains_known_secret(value)):
            return Param(MASK, size=len(value))
        if binary:
            shown = base64.b64encode(value[:limit]).decode("ascii")
            return Param(shown, True, len(value), len(value) > limit)
        text = self._redactor.redact(_decode(value[: limit + _REDACT_MARGIN]))
        raw = text.encode("utf-8", "surrogateescape")
        cut = len(value) > limit or len(raw) > limit
        return Param(_decode(raw[:limit]) if cut else text, False, len(value), cut)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def rows_of(tag: str) -> int | None:
    """The row count in a command tag (`INSERT 0 5` → 5, `SELECT 3` → 3), if it has one."""
    head, _, count = tag.rpartition(" ")
    return int(count) if head and count.isascii() and count.isdigit() else None
