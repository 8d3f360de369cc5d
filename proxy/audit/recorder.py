"""One session's queries as audit records: wire messages in, one record per round trip out.

The relay hands `client_frames(frames)` the client's messages of one chunk *before* forwarding
it and writes the records it returns first (the queries are on record before the database sees
them); it hands `upstream_frames(frames)` the database's answers, which settle each record's
outcome in protocol order. `query_events.py` describes the records.

Round trips. A simple Query is one `query.batch` record. So is an extended-protocol batch —
Parse, Bind, Execute, Close... up to its Sync, however many statements. When a chunk ends before
the Sync (a client pipelining with Flush, or a batch longer than one read, or than MAX_STEPS),
what arrived is written at once as a record marked `open`, and the batch goes on in the next
record. Describe and Flush are not recorded: they change nothing. Each record takes the next
per-session number `n`; a FunctionCall has its own record (`query.function_call`), numbered
alike, and so does the data of a COPY (`query.copy`, with the `n` of the record that started it).

Outcomes. The backend answers in order, so the recorder keeps a queue of the steps awaiting an
answer (Parse, Bind, Close, Execute, Sync, Query, FunctionCall). A record is settled when its
last one is answered: its command tags, rows and duration, or the SQLSTATE and message of the
step that failed. An error makes the backend skip everything up to the Sync, so the later records
of the batch are `skipped`; an error in a Describe (not recorded) is blamed on the next step.
Settled outcomes wait in `done` until the session's next record carries them, or the auditor
writes them in a record of their own (`query.done`, `runtime/auditing.py`).

The recorder reads no clock: `monotonic` is the session clock's, for durations.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

from proxy.audit import fast_decode
from proxy.audit.encode import EncodedRecord
from proxy.audit.events import AuditEvent
from proxy.audit.query_events import (
    BATCH,
    DONE,
    FUNCTION_CALL_KIND,
    CopyDirection,
    CopyTransfer,
    OutcomeStatus,
)
from proxy.audit.shaping import Shaper
from proxy.wire import (
    BIND,
    BIND_COMPLETE,
    CLOSE,
    CLOSE_COMPLETE,
    COMMAND_COMPLETE,
    COPY_BOTH_RESPONSE,
    COPY_IN_RESPONSE,
    COPY_OUT_RESPONSE,
    EMPTY_QUERY_RESPONSE,
    ERROR_RESPONSE,
    EXECUTE,
    FUNCTION_CALL,
    PARSE,
    PARSE_COMPLETE,
    PORTAL_SUSPENDED,
    QUERY,
    READY_FOR_QUERY,
    SYNC,
    Close,
    ErrorResponse,
    Frame,
    FunctionCall,
)

MAX_STEPS: Final = 256  # steps in one record; a longer batch in one chunk goes on in the next
MAX_DONE: Final = 256  # outcomes waiting for a record to carry them; then they go at once

# The message types the recorder needs to see (for the relay's frame scanners).
CLIENT_TYPES: Final = frozenset((QUERY, PARSE, BIND, EXECUTE, FUNCTION_CALL, SYNC, CLOSE))
UPSTREAM_TYPES: Final = frozenset((
    PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE, COMMAND_COMPLETE, EMPTY_QUERY_RESPONSE,
    ERROR_RESPONSE, READY_FOR_QUERY, PORTAL_SUSPENDED, COPY_IN_RESPONSE, COPY_OUT_RESPONSE,
    COPY_BOTH_RESPONSE,
))  # fmt: skip
_ENDS_AT_READY = (SYNC, QUERY, FUNCTION_CALL)  # each is answered by one ReadyForQuery
_OK, _ERROR, _SKIPPED = OutcomeStatus.OK, OutcomeStatus.ERROR, OutcomeStatus.SKIPPED
_COPY_STARTS = {COPY_IN_RESPONSE: CopyDirection.IN, COPY_OUT_RESPONSE: CopyDirection.OUT,
                COPY_BOTH_RESPONSE: CopyDirection.OUT}  # fmt: skip

Written = AuditEvent | EncodedRecord


class _Record:
    """A record written, awaiting its outcome."""

    __slots__ = ("awaiting", "error", "failed_step", "n", "open", "rows", "skipped", "started",
                 "tags")  # fmt: skip

    def __init__(self, n: int, started: float) -> None:
        self.n = n
        self.started = started
        self.awaiting = 0  # its steps not yet answered
        self.open = False  # the last record of a batch whose Sync has not come yet
        self.tags: list[str] = []  # JSON, one per statement run
        self.rows: int | None = None
        self.error: ErrorResponse | None = None
        self.failed_step: int | None = None
        self.skipped = False  # an earlier error in its batch skipped its steps


class SessionRecorder:
    """Turns one session's protocol messages into query records (see the module docstring)."""

    def __init__(
        self,
        session_id: str,
        shaper: Shaper,
        monotonic: Callable[[], float],
        copy_bytes: Callable[[CopyDirection], int],
    ) -> None:
        """`copy_bytes(direction)` is a running total of CopyData payload bytes in that
        direction, counted by the relay without copying the rows."""
        self.session_id = session_id
        self.queries = 0  # Query, Execute and FunctionCall messages seen
        self.done: list[str] = []  # settled outcomes (JSON objects) not yet written
        self._shaper = shaper
        self._monotonic = monotonic
        self._copy_bytes = copy_bytes
        self._session = '"session_id":' + shaper.string(session_id)
        self._n = 0
        self._awaiting: deque[tuple[int, _Record | None, int]] = deque()  # (type, record, step)
        self._building: _Record | None = None
        self._steps: list[str] = []  # of the record being built
        self._open: _Record | None = None
        self._skipping = False
        self._secret_statements: set[str] = set()
        self._copy: tuple[int, CopyDirection] | None = None
        self._copy_seen = {CopyDirection.IN: 0, CopyDirection.OUT: 0}
        self._copies: list[CopyTransfer] = []  # ended, not yet written

    # -- what the client sends -----------------------------------------------------------------

    def client_frames(self, frames: Iterable[Frame]) -> list[Written]:
        """The records of these messages, to be written before they are forwarded (the first
        carries the outcomes waiting in `done`). Raises RemoteProtocolError if one is
        malformed."""
        written: list[Written] = []
        shaper = self._shaper
        for type_byte, payload in frames:
            if type_byte == BIND:
                self._bind(payload, written)
            elif type_byte == EXECUTE:
                self.queries += 1
                self._step(_execute(payload, shaper), EXECUTE, written)
            elif type_byte == SYNC:
                self._sync(written)
            elif type_byte == PARSE:
                self._parse(payload, written)
            elif type_byte == QUERY:
                self.queries += 1
                self._alone(QUERY, f',"steps":[{shaper.query(payload)}]', BATCH, written)
            elif type_byte == CLOSE:
                self._close(payload, written)
            elif type_byte == FUNCTION_CALL:
                self._function_call(payload, written)
        if self._building is not None:
            self._emit(written, open_batch=True)
        if written and self._copies:
            written[:0], self._copies = self._copies, []
        return written

    def _parse(self, payload: bytes, written: list[Written]) -> None:
        statement = self._shaper.statement(payload)
        if statement.secret:
            self._secret_statements.add(statement.name)
        else:
            self._secret_statements.discard(statement.name)
        self._step(statement.step, PARSE, written)

    def _close(self, payload: bytes, written: list[Written]) -> None:
        close = Close.decode(payload)
        if close.kind == "S":
            self._secret_statements.discard(close.name)
        what = "statement" if close.kind == "S" else "portal"
        self._step(f'{{"close":"{what}","name":{self._shaper.name(close.name)}}}', CLOSE, written)

    def _function_call(self, payload: bytes, written: list[Written]) -> None:
        self.queries += 1
        call = FunctionCall.decode(payload)
        args, omitted = self._shaper.values(call.arg_formats, call.args, secret=False)
        members = f',"function_oid":{call.function_oid},"args":{args},"args_omitted":{omitted}'
        self._alone(FUNCTION_CALL, members, FUNCTION_CALL_KIND, written)

    def _bind(self, payload: bytes, written: list[Written]) -> None:
        portal, statement, formats, values = fast_decode.bind(payload)
        secret = statement in self._secret_statements
        params, omitted = self._shaper.values(formats, values, secret)
        name = self._shaper.name
        step = "".join((
            '{"bind":', name(portal), ',"statement":', name(statement), ',"params":', params,
            f',"omitted":{omitted}' if omitted else "", ',"redacted":true}' if secret else "}",
        ))  # fmt: skip
        self._step(step, BIND, written)

    def _step(self, step: str, type_byte: int, written: list[Written]) -> None:
        """An extended-protocol step: into the record being built, awaiting its answer."""
        record = self._building
        if record is None or len(self._steps) >= MAX_STEPS:
            if record is not None:  # full: the batch goes on in the next record
                self._emit(written, open_batch=True)
            record = self._building = self._new_record()
        self._steps.append(step)
        self._awaiting.append((type_byte, record, len(self._steps) - 1))
        record.awaiting += 1

    def _sync(self, written: list[Written]) -> None:
        """The end of a batch: its record is the one being built, or the last one written."""
        record = self._building or self._open
        self._awaiting.append((SYNC, record, -1))
        if record is None:
            return  # a Sync with nothing before it
        record.awaiting += 1
        if record is self._building:
            self._emit(written, open_batch=False)
        else:
            record.open, self._open = False, None

    def _alone(self, type_byte: int, members: str, kind: str, written: list[Written]) -> None:
        """A Query or FunctionCall: it ends any batch in progress and is a record of its own."""
        if self._building is not None:
            self._emit(written, open_batch=False)
        self._close_batch()
        record = self._new_record()
        record.awaiting = 1
        self._awaiting.append((type_byte, record, 0))
        members = f'{self._session},"n":{record.n}{members}{self._done()}'
        written.append(EncodedRecord(kind, members))

    def _new_record(self) -> _Record:
        self._close_batch()
        self._n += 1
        return _Record(self._n, self._monotonic())

    def _close_batch(self) -> None:
        """The last record written of the current batch is no longer its last."""
        if (record := self._open) is not None:
            record.open, self._open = False, None
            if record.awaiting == 0:
                self._settle(record, None)

    def _emit(self, written: list[Written], *, open_batch: bool) -> None:
        record = self._building
        assert record is not None
        steps, self._steps, self._building = ",".join(self._steps), [], None
        more = ',"open":true' if open_batch else ""
        if open_batch:
            record.open, self._open = True, record
        members = f'{self._session},"n":{record.n},"steps":[{steps}]{more}{self._done()}'
        written.append(EncodedRecord(BATCH, members))

    def _done(self) -> str:
        if not self.done:
            return ""
        done, self.done = self.done, []
        return ',"done":[' + ",".join(done) + "]"

    # -- what the database answers -------------------------------------------------------------

    def upstream_frames(self, frames: Iterable[Frame]) -> bool:
        """Follow the database's answers; True if outcomes (or a COPY's record) now wait to be
        written (`take_waiting`)."""
        for type_byte, payload in frames:
            if type_byte == READY_FOR_QUERY:
                self._ready()
            elif self._skipping or not self._awaiting:
                continue
            elif type_byte == COMMAND_COMPLETE:
                self._completed(payload)
            elif type_byte in (PARSE_COMPLETE, BIND_COMPLETE, CLOSE_COMPLETE):
                self._answered(self._awaiting.popleft()[1])
            elif type_byte == ERROR_RESPONSE:
                self._error(ErrorResponse.decode(payload))
            elif type_byte in (EMPTY_QUERY_RESPONSE, PORTAL_SUSPENDED):
                kind, record, _ = self._awaiting[0]
                if kind == EXECUTE and record is not None:
                    record.tags.append('""' if type_byte == EMPTY_QUERY_RESPONSE else "null")
                    self._answered(self._awaiting.popleft()[1])
            elif (direction := _COPY_STARTS.get(type_byte)) is not None:
                record = self._awaiting[0][1]
                if record is not None:
                    self._copy = (record.n, direction)
        return bool(self.done or self._copies)

    @property
    def full(self) -> bool:
        """Whether as many outcomes wait as one record may carry (`take_waiting` now)."""
        return len(self.done) >= MAX_DONE

    def _completed(self, payload: bytes) -> None:
        if self._copy is not None:
            self._end_copy()
        kind, record, _ = self._awaiting[0]
        if record is None or kind not in (EXECUTE, QUERY):
            return
        tag, rows = self._shaper.tag(fast_decode.command_tag(payload))
        record.tags.append(tag)
        if rows is not None:
            record.rows = rows + (record.rows or 0)
        if kind == EXECUTE:
            self._answered(self._awaiting.popleft()[1])

    def _error(self, error: ErrorResponse) -> None:
        self._end_copy()
        kind, record, step = self._awaiting[0]
        if record is not None and record.error is None:
            record.error, record.failed_step = error, None if kind == SYNC else step
        if kind in _ENDS_AT_READY:  # ends at its ReadyForQuery (Sync: the implicit COMMIT failed)
            return
        self._awaiting.popleft()
        self._skipping = True  # the backend skips to the next Sync
        self._answered(record)

    def _ready(self) -> None:
        self._skipping = False
        if self._copy is not None:
            self._end_copy()
        while self._awaiting:
            kind, record, _ = self._awaiting.popleft()
            if record is not None and kind not in _ENDS_AT_READY and record.error is None:
                record.skipped = True
            self._answered(record)
            if kind in _ENDS_AT_READY:
                break

    def _answered(self, record: _Record | None) -> None:
        if record is not None:
            record.awaiting -= 1
            if record.awaiting == 0 and not record.open:
                self._settle(record, None)

    def _settle(self, record: _Record, status: OutcomeStatus | None) -> None:
        if status is None:
            status = _ERROR if record.error else _SKIPPED if record.skipped else _OK
        rows = "null" if record.rows is None else str(record.rows)
        duration = round(max(0.0, self._monotonic() - record.started), 6)
        outcome = (f'{{"n":{record.n},"status":"{status}","tags":[{",".join(record.tags)}],'
                   f'"rows":{rows},"duration":{float.__repr__(duration)}')  # fmt: skip
        if (error := record.error) is not None:
            sqlstate, message = error.sqlstate or "", error.message or ""
            step = "null" if record.failed_step is None else str(record.failed_step)
            string = self._shaper.string
            outcome += (f',"sqlstate":{string(sqlstate)},"error":{string(message)},'
                        f'"step":{step}')  # fmt: skip
        self.done.append(outcome + "}")

    def _end_copy(self) -> None:
        if self._copy is None:
            return
        n, direction = self._copy
        self._copy = None
        # CopyData flows only inside a COPY, so what the relay counted since the previous COPY
        # ended is this COPY's data (the relay counts whole chunks, so the total at this COPY's
        # start could already include some of its rows).
        total = self._copy_bytes(direction)
        size, self._copy_seen[direction] = total - self._copy_seen[direction], total
        self._copies.append(CopyTransfer(self.session_id, n, direction, size))

    # -- the session's end ---------------------------------------------------------------------

    def take_waiting(self) -> list[Written]:
        """What waits to be written: COPY records and settled outcomes (as one `query.done`)."""
        waiting: list[Written] = list(self._copies)
        self._copies = []
        if self.done:
            waiting.append(EncodedRecord(DONE, self._session + self._done()))
        return waiting

    def finish(self) -> list[Written]:
        """At the session's end: outcomes for what never got an answer (`error` if the error
        came but its ReadyForQuery did not), then everything waiting."""
        self._end_copy()
        seen: set[int] = set()
        for _, record, _ in self._awaiting:
            if record is not None and record.n not in seen:
                seen.add(record.n)
                self._settle(record, _ERROR if record.error else OutcomeStatus.UNFINISHED)
        if (record := self._open) is not None and record.n not in seen:
            self._settle(record, None)
        self._awaiting.clear()
        self._open = None
        return self.take_waiting()


def _execute(payload: bytes, shaper: Shaper) -> str:
    """An Execute's step: `{"execute":<portal>[,"max_rows":N]}`."""
    portal, max_rows = fast_decode.execute(payload)
    limit = f',"max_rows":{max_rows}' if max_rows else ""
    return f'{{"execute":{shaper.name(portal)}{limit}}}'
