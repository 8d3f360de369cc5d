"""Session transcripts read back from the audit log.

Every session here is written as the server writes it: its start record, its round trips made by
the real recorder from wire messages (`SessionRecorder`), the database's answers fed back in,
outcomes carried by later records or written on their own, its end record — all through the real
sink (`AuditLog`), rotation included. Only the torn and garbled lines, and the records of a
format-2 run (whose writer is gone), are written by hand.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import proxy.audit.line_scan
import proxy.audit.sink_state
from proxy.audit.encode import EncodedRecord
from proxy.audit.events import SessionEnded, SessionStarted
from proxy.audit.log import AuditLog, SinkOptions
from proxy.audit.query_events import CopyDirection
from proxy.audit.recorder import UPSTREAM_TYPES, SessionRecorder
from proxy.audit.records import chain_path, log_files, worker_audit_path
from proxy.audit.redact import Redactor
from proxy.audit.shaping import Shaper
from proxy.audit.sink_state import MIN_FILE_BYTES
from proxy.audit.transcript import (
    EntryKind,
    NoOutcome,
    Param,
    SessionState,
    StepAction,
    Transcript,
    audit_files,
    read_transcript,
    sessions_of_grant,
)
from proxy.wire import (
    Bind,
    BindComplete,
    CommandComplete,
    CopyDone,
    CopyInResponse,
    ErrorResponse,
    Execute,
    FunctionCall,
    Parse,
    ParseComplete,
    Query,
    ReadyForQuery,
    Sync,
    TransactionStatus,
)
from proxy.wire.framing import Frame
from tests.fixtures.clock import FakeClock
from tests.unit.audit.helpers import frames_of, lines_of, open_log

READY = ReadyForQuery(TransactionStatus.IDLE)
SECRET = "hunter2-correct-horse"


class Session:
    """One proxied session as `runtime/auditing.py`'s SessionAuditor writes it."""

    def __init__(
        self, log: AuditLog, clock: FakeClock, session_id: str, grant_id: str = "req_1"
    ) -> None:
        self.log, self.clock, self.session_id = log, clock, session_id
        self.copied = {CopyDirection.IN: 0, CopyDirection.OUT: 0}
        shaper = Shaper(Redactor())
        self.recorder = SessionRecorder(
            session_id, shaper, clock.monotonic, self.copied.__getitem__
        )
        log.append(
            SessionStarted(
                session_id, grant_id, "alice", "orders", "read", "pgw_alice", "127.0.0.1:50432",
                True, "psql", clock.now(), clock.now() + timedelta(hours=1), 4242,
            )
        )  # fmt: skip

    def send(self, *messages: Any) -> None:
        """A chunk from the client: its records are written before it is forwarded."""
        self.send_frames(frames_of(*messages))

    def send_frames(self, frames: list[Frame]) -> None:
        self.log.append_many(self.recorder.client_frames(frames))

    def answer(self, *messages: Any, after: float = 0.0) -> None:
        """The database answers `after` seconds later; outcomes wait for the next record."""
        self.clock.advance(after)
        self.recorder.upstream_frames([f for f in frames_of(*messages) if f.type in UPSTREAM_TYPES])

    def write_waiting(self) -> None:
        """What the auditor writes on its own when no record carries the outcomes in time."""
        self.log.append_many(self.recorder.take_waiting())

    def end(self, reason: str = "client_left") -> None:
        records = self.recorder.finish()
        ended = SessionEnded(self.session_id, reason, "", timedelta(seconds=3), 10, 20,
                             self.recorder.queries)  # fmt: skip
        self.log.append_many([*records, ended])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


def transcript(path: Path, session_id: str, **limits: int) -> Transcript:
    found = read_transcript(audit_files(path), session_id, **limits)
    assert found is not None
    return found


def test_a_simple_query_reads_back_with_its_outcome_and_the_sessions_facts(
    path: Path, clock: FakeClock
) -> None:
    log = open_log(path, clock=clock)
    session = Session(log, clock, "a1b2c3d4e5f60718")
    session.send(Query("SELECT 1"))
    session.answer(CommandComplete("SELECT 1"), READY, after=0.25)
    clock.advance(1)
    session.end()
    log.close()

    read = transcript(path, "a1b2c3d4e5f60718")
    start = read.start
    assert (start.user, start.target, start.access_level, start.grant_id) == (
        "alice", "orders", "read", "req_1")  # fmt: skip
    assert (start.client_address, start.application_name) == ("127.0.0.1:50432", "psql")
    assert start.started_at == clock.now() - timedelta(seconds=1.25)
    assert start.log_file == "audit.jsonl"
    assert read.state is SessionState.ENDED
    assert read.end is not None
    assert (read.end.reason, read.end.at, read.end.queries) == ("client_left", clock.now(), 1)
    (entry,) = read.entries
    assert entry.kind is EntryKind.QUERY
    assert [(s.action, s.text) for s in entry.steps] == [(StepAction.QUERY, "SELECT 1")]
    assert entry.outcome is not None
    assert (entry.outcome.status, entry.outcome.tags, entry.outcome.rows) == (
        "ok", ("SELECT 1",), 1)  # fmt: skip
    assert entry.outcome.duration == 0.25
    assert entry.no_outcome is None
    assert (read.truncated, read.scan_stopped, read.skipped_lines) == (False, False, 0)


def test_an_extended_batch_shows_names_and_parameters_as_recorded_never_a_password(
    path: Path, clock: FakeClock
) -> None:
    log = open_log(path, clock=clock)
    session = Session(log, clock, "s-extended")
    session.send(
        Parse("find", "SELECT * FROM orders WHERE id = $1 AND note = $2", (23, 25)),
        Bind("cursor", "find", (), (b"42", None)), Execute("cursor", 10), Sync(),
    )  # fmt: skip
    session.answer(ParseComplete(), BindComplete(), CommandComplete("SELECT 1"), READY)
    session.send(
        Parse("pw", "ALTER ROLE bob PASSWORD $1", ()), Bind("", "pw", (), (SECRET.encode(),)),
        Execute(""), Sync(),
    )  # fmt: skip
    session.answer(ParseComplete(), BindComplete(), CommandComplete("ALTER ROLE"), READY)
    session.end()
    log.close()

    first, second = transcript(path, "s-extended").entries
    assert first.kind is EntryKind.EXTENDED
    parse, bind, execute = first.steps
    assert (parse.action, parse.statement) == (StepAction.PARSE, "find")
    assert parse.param_types == (23, 25)
    assert parse.text == "SELECT * FROM orders WHERE id = $1 AND note = $2"
    assert (bind.action, bind.portal, bind.statement) == (StepAction.BIND, "cursor", "find")
    assert bind.params == (Param("42"), Param(None))
    assert (execute.action, execute.portal, execute.max_rows) == (StepAction.EXECUTE, "cursor", 10)
    assert first.outcome is not None
    assert first.outcome.tags == ("SELECT 1",)
    bind = second.steps[1]
    assert (bind.redacted, bind.params) == (True, (Param("***"),))
    assert second.outcome is not None
    assert second.outcome.status == "ok"
    assert SECRET not in repr(second)


def test_a_failing_statement_shows_its_sqlstate_and_message(path: Path, clock: FakeClock) -> None:
    log = open_log(path, clock=clock)
    session = Session(log, clock, "s-fails")
    session.send(Query("SELECT 1/0"))
    session.answer(ErrorResponse.error("22012", "division by zero"), READY)
    session.send(Parse("", "SELECT nope", ()), Bind("", ""), Execute(""), Sync())
    session.answer(ErrorResponse.error("42703", 'column "nope" does not exist'), READY)
    session.end()
    log.close()

    simple, extended = transcript(path, "s-fails").entries
    assert simple.outcome is not None
    assert simple.outcome.status == "error"
    assert (simple.outcome.sqlstate, simple.outcome.error) == ("22012", "division by zero")
    assert extended.outcome is not None
    assert (extended.outcome.sqlstate, extended.outcome.failed_step) == ("42703", 0)
    assert extended.outcome.error == 'column "nope" does not exist'


def test_a_statement_not_yet_answered_is_shown_running(path: Path, clock: FakeClock) -> None:
    log = open_log(path, clock=clock)
    session = Session(log, clock, "s-live")
    session.send(Query("SELECT 1"))
    session.answer(CommandComplete("SELECT 1"), READY)
    session.write_waiting()
    session.send(Query("SELECT pg_sleep(600)"))  # the database has not answered
    log.flush()

    read = transcript(path, "s-live")
    assert read.state is SessionState.LIVE
    assert read.end is None
    done, running = read.entries
    assert done.outcome is not None
    assert (done.no_outcome, running.outcome, running.no_outcome) == (None, None, NoOutcome.RUNNING)
    log.close()


def test_a_statement_whose_outcome_a_stopped_server_never_wrote_is_shown_lost(
    path: Path, clock: FakeClock
) -> None:
    log = open_log(path, clock=clock)
    Session(log, clock, "s-cut").send(Query("UPDATE orders SET paid = true"))
    log.close()  # pgwarden stops before the answer (a crash writes no end record either)
    open_log(path, clock=clock).close()  # the next run opens the chain again

    read = transcript(path, "s-cut")
    assert read.state is SessionState.CUT_SHORT
    ((entry),) = read.entries
    assert (entry.outcome, entry.no_outcome) == (None, NoOutcome.LOST)


def test_a_torn_last_line_and_a_garbled_line_are_skipped_and_counted(
    path: Path, clock: FakeClock
) -> None:
    log = open_log(path, clock=clock)
    session = Session(log, clock, "s-torn")
    session.send(Query("SELECT 1"))
    session.answer(CommandComplete("SELECT 1"), READY)
    session.send(Query("SELECT 2"))
    log.close()
    lines = lines_of(path)
    garbled = b'{"seq":99,"kind":"query.batch","session_id":"s-torn","n":7,"steps":[{"qu\n'
    torn = lines[-2][: len(lines[-2]) // 2]  # the SELECT 2 record, cut by a crash mid-write
    path.write_bytes(b"".join([*lines[:-2], garbled, torn]))

    read = transcript(path, "s-torn")
    assert read.skipped_lines == 2
    ((entry),) = read.entries
    assert entry.steps[0].text == "SELECT 1"
    assert entry.outcome is None  # its outcome was in the torn record


def test_only_the_asked_session_is_read_from_interleaved_ones_in_order(
    path: Path, clock: FakeClock
) -> None:
    log = open_log(path, clock=clock)
    one, two = Session(log, clock, "s-one"), Session(log, clock, "s-two")
    for number in range(3):
        one.send(Query(f"SELECT {number}"))
        two.send(Query("SELECT 1/0"))  # same n as one's: its outcome must not settle one's
        two.answer(ErrorResponse.error("22012", "division by zero"), READY)
        one.answer(CommandComplete("SELECT 1"), READY)
    one.end()
    two.end()
    log.close()

    read = transcript(path, "s-one")
    assert [entry.steps[0].text for entry in read.entries] == ["SELECT 0", "SELECT 1", "SELECT 2"]
    assert [entry.n for entry in read.entries] == [1, 2, 3]
    assert all(e.outcome is not None and e.outcome.status == "ok" for e in read.entries)
    assert read_transcript(audit_files(path), "s-three") is None


def test_past_max_statements_the_first_ones_are_kept_and_the_rest_counted(
    path: Path, clock: FakeClock
) -> None:
    log = open_log(path, clock=clock)
    session = Session(log, clock, "s-many")
    for number in range(5):
        session.send(Query(f"SELECT {number}"))
        session.answer(CommandComplete("SELECT 1"), READY)
    session.end()
    log.close()

    read = transcript(path, "s-many", max_statements=3)
    assert [entry.steps[0].text for entry in read.entries] == ["SELECT 0", "SELECT 1", "SELECT 2"]
    assert (read.truncated, read.entries_omitted) == (True, 2)
    assert all(entry.outcome is not None for entry in read.entries)
    assert read.end is not None


def test_a_session_spread_over_a_rotated_file_and_the_current_one_reads_whole(
    path: Path, clock: FakeClock
) -> None:
    log = open_log(path, clock=clock, options=SinkOptions(max_file_bytes=MIN_FILE_BYTES))
    session = Session(log, clock, "s-rotated")
    for number in range(30):
        session.send(Query(f"SELECT {number} AS padding_{'x' * 100}"))
        session.answer(CommandComplete("SELECT 1"), READY)
        log.flush()  # rotates once the file is full
    session.end()
    log.close()
    files = log_files(path)
    assert len(files) >= 3

    read = transcript(path, "s-rotated")
    assert [entry.n for entry in read.entries] == list(range(1, 31))
    assert all(entry.outcome is not None for entry in read.entries)
    assert read.start.log_file == files[0].name
    assert read.state is SessionState.ENDED


def test_function_calls_and_copies_are_entries_too(path: Path, clock: FakeClock) -> None:
    log = open_log(path, clock=clock)
    session = Session(log, clock, "s-copy")
    session.send(FunctionCall(1598, (1,), (b"\x00\x00\x00\x07",)))
    session.answer(READY)
    session.send(Query("COPY orders FROM STDIN"))
    session.answer(CopyInResponse(0, (0,)))
    session.copied[CopyDirection.IN] += 6  # the relay counts CopyData; it is not handed over
    session.send(CopyDone())
    session.answer(CommandComplete("COPY 3"), READY)
    session.end()
    log.close()

    call, query, copy = transcript(path, "s-copy").entries
    assert (call.kind, call.function_oid, call.args) == (
        EntryKind.FUNCTION_CALL, 1598, (Param("AAAABw==", binary=True),))  # fmt: skip
    assert call.outcome is not None
    assert query.outcome is not None
    assert query.outcome.tags == ("COPY 3",)
    assert (copy.kind, copy.n, copy.copy_direction, copy.copy_bytes) == (EntryKind.COPY, 2, "in", 6)


def test_undecodable_bytes_in_a_query_read_back_printable(path: Path, clock: FakeClock) -> None:
    log = open_log(path, clock=clock)
    session = Session(log, clock, "s-bytes")
    session.send_frames([Frame(ord("Q"), b"SELECT '\xff'\x00")])
    session.end()
    log.close()

    (entry,) = transcript(path, "s-bytes").entries
    assert entry.steps[0].text == "SELECT '\\xff'"
    entry.steps[0].text.encode("utf-8")  # a page can show it


def test_the_sessions_of_a_grant_are_listed_newest_first(path: Path, clock: FakeClock) -> None:
    log = open_log(path, clock=clock)
    ended = Session(log, clock, "s-ended", "req_7")
    ended.send(Query("SELECT 1"))
    ended.answer(CommandComplete("SELECT 1"), READY)
    ended.end("expired")
    clock.advance(60)
    Session(log, clock, "s-other", "req_8").end()
    clock.advance(60)
    live = Session(log, clock, "s-live", "req_7")
    live.send(Parse("", "SELECT 1", ()), Bind("", ""), Execute(""), Execute(""), Sync())
    live.send(Query("SELECT 2"))
    log.flush()

    listed = sessions_of_grant(audit_files(path), "req_7")
    assert [s.start.session_id for s in listed] == ["s-live", "s-ended"]
    assert [s.state for s in listed] == [SessionState.LIVE, SessionState.ENDED]
    assert [s.queries for s in listed] == [3, 1]
    assert listed[1].end is not None
    assert listed[1].end.reason == "expired"
    assert [s.start.session_id for s in sessions_of_grant(audit_files(path), "req_7", limit=1)] == [
        "s-live"
    ]
    assert sessions_of_grant(audit_files(path), "req_9") == []
    log.close()


def test_every_replicas_and_workers_chain_is_read_rotated_files_first(
    path: Path, clock: FakeClock
) -> None:
    small = SinkOptions(max_file_bytes=MIN_FILE_BYTES)
    for chain in (chain_path(path, "b"), worker_audit_path(path, 1, "a"), chain_path(path, "a")):
        log = open_log(chain, clock=clock, options=small)
        for number in range(4):
            session = Session(log, clock, f"{chain.name}-{number}", "req_1")
            session.send(Query(f"SELECT {number} AS padding_{'x' * 900}"))
            session.end()
            log.flush()
        log.close()
    (path.parent / "unrelated.jsonl").write_text("{}\n")

    files = audit_files(path)
    names = [file.name for file in files]
    assert names[-1] == "audit.b.jsonl"
    assert names.index("audit.a.jsonl") < names.index("audit.a.worker1.jsonl")
    for chain in ("audit.a.jsonl", "audit.a.worker1.jsonl", "audit.b.jsonl"):
        mine = [name for name in names if name.startswith(chain)]
        assert len(mine) >= 2
        assert mine == [*sorted(mine[:-1]), chain]  # rotated files, oldest first, then active
    assert len(sessions_of_grant(files, "req_1")) == 12
    read = transcript(path, "audit.a.worker1.jsonl-3")
    assert read.start.log_file.startswith("audit.a.worker1.jsonl")


def test_a_file_gone_since_it_was_listed_is_skipped(path: Path, clock: FakeClock) -> None:
    log = open_log(path, clock=clock)
    Session(log, clock, "s-here").end()
    log.close()

    gone = path.with_name("audit.jsonl.000000000001")  # renamed again, or archived
    found = read_transcript([gone, path], "s-here")
    assert found is not None
    assert found.missing_files == 1


def test_the_scan_stops_at_max_bytes_scanned(path: Path, clock: FakeClock) -> None:
    log = open_log(path, clock=clock)
    session = Session(log, clock, "s-long")
    for number in range(20):
        session.send(Query(f"SELECT {number}"))
        session.answer(CommandComplete("SELECT 1"), READY)
    session.end()
    log.close()
    size = path.stat().st_size

    whole = transcript(path, "s-long", max_bytes_scanned=size)
    assert (whole.scan_stopped, whole.bytes_scanned, len(whole.entries)) == (False, size, 20)
    cut = transcript(path, "s-long", max_bytes_scanned=size // 2)
    assert cut.scan_stopped
    assert cut.bytes_scanned == size // 2
    assert 0 < len(cut.entries) < 20
    assert cut.state is SessionState.UNKNOWN
    assert cut.entries[-1].no_outcome is NoOutcome.NOT_READ  # the next record, unread, holds it
    assert read_transcript([path], "s-long", max_bytes_scanned=100) is None


def test_only_the_newest_files_that_fit_in_the_budget_are_read(
    path: Path, clock: FakeClock
) -> None:
    log = open_log(path, clock=clock, options=SinkOptions(max_file_bytes=MIN_FILE_BYTES))
    for number in range(12):
        session = Session(log, clock, f"s-{number}")
        session.send(Query(f"SELECT {number} AS padding_{'x' * 1000}"))
        session.end()
        log.flush()
        clock.advance(60)
    log.close()
    files = audit_files(path)
    budget = sum(file.stat().st_size for file in files[-2:])

    assert read_transcript(files, "s-11", max_bytes_scanned=budget) is not None
    assert read_transcript(files, "s-0", max_bytes_scanned=budget) is None
    assert read_transcript(files, "s-0") is not None
    newest = sessions_of_grant(files, "req_1", max_bytes_scanned=budget)
    assert 0 < len(newest) < 12
    assert newest[0].start.session_id == "s-11"


def test_a_format_2_runs_one_record_per_message_reads_too(
    path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proxy.audit.sink_state, "FORMAT_VERSION", 2)
    log = open_log(path, clock=clock)
    Session(log, clock, "s-old")
    members = {
        "query.simple": '"n":1,"text":"SELECT 1","text_bytes":8,"truncated":false',
        "query.parse": '"n":2,"statement":"","text":"SELECT $1","text_bytes":9,'
                       '"truncated":false,"param_types":[]',
        "query.bind": '"n":3,"portal":"","statement":"","params":[{"text":"7"}],'
                      '"params_omitted":0,"redacted":false',
        "query.execute": '"n":4,"portal":"","max_rows":0',
    }  # fmt: skip
    log.append_many([EncodedRecord(k, '"session_id":"s-old",' + m) for k, m in members.items()])
    for n in (1, 4):
        log.append(EncodedRecord("query.outcome", f'"session_id":"s-old","n":{n},"status":"ok",'
                                 '"tags":["SELECT 1"],"rows":1,"sqlstate":null,"error":null,'
                                 '"duration":0.002'))  # fmt: skip
    log.close()

    simple, parse, bind, execute = transcript(path, "s-old").entries
    assert simple.steps[0].text == "SELECT 1"
    assert (parse.steps[0].action, parse.steps[0].text) == (StepAction.PARSE, "SELECT $1")
    assert bind.steps[0].params == (Param("7"),)
    assert (parse.outcome, parse.no_outcome, bind.no_outcome) == (None, None, None)
    assert simple.outcome is not None
    assert execute.outcome is not None
    assert execute.outcome.duration == 0.002


def test_lines_across_block_borders_read_alike_and_an_overlong_one_is_skipped(
    path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(path, clock=clock)
    session = Session(log, clock, "s-blocks")
    for text in ("SELECT 1", f"SELECT '{'y' * 2000}'", "SELECT 3"):
        session.send(Query(text))
        session.answer(CommandComplete("SELECT 1"), READY)
    session.end()
    log.close()
    whole = transcript(path, "s-blocks")

    monkeypatch.setattr(proxy.audit.line_scan, "BLOCK_BYTES", 7)
    small = transcript(path, "s-blocks")
    assert (small.start, small.end, small.entries) == (whole.start, whole.end, whole.entries)
    monkeypatch.setattr(proxy.audit.line_scan, "MAX_LINE_BYTES", 1000)
    skipped = transcript(path, "s-blocks")
    assert [entry.steps[0].text for entry in skipped.entries] == ["SELECT 1", "SELECT 3"]
    assert skipped.skipped_lines == 1
