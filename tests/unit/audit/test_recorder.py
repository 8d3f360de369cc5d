"""The session recorder: wire messages in, query events out, outcomes matched in protocol order."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

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
from proxy.audit.recorder import QueryLimits, SessionRecorder, rows_of
from proxy.audit.redact import Redactor
from proxy.wire import (
    Bind,
    BindComplete,
    Close,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyInResponse,
    CopyOutResponse,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    FunctionCall,
    NoData,
    Parse,
    ParseComplete,
    PortalSuspended,
    Query,
    ReadyForQuery,
    Sync,
    TransactionStatus,
)

READY = ReadyForQuery(TransactionStatus.IDLE)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def recorder(clock: Clock, limits: QueryLimits = QueryLimits()) -> SessionRecorder:  # noqa: B008
    return SessionRecorder("s1", Redactor(), clock, limits)


def outcomes(events: list[AuditEvent]) -> list[tuple[int, OutcomeStatus, tuple[str, ...]]]:
    return [(e.n, e.status, e.tags) for e in events if isinstance(e, QueryOutcome)]


def test_a_multi_statement_query_is_one_record_with_one_outcome(clock: Clock) -> None:
    rec = recorder(clock)
    text = "BEGIN; INSERT INTO t VALUES (1), (2); SELECT * FROM t; COMMIT"
    assert rec.client(Query(text)) == [SimpleQuery("s1", 1, text, len(text), False)]
    answers = [CommandComplete(t) for t in ("BEGIN", "INSERT 0 2", "SELECT 2", "COMMIT")]
    assert all(rec.upstream(a) == [] for a in answers)
    clock.now += 0.25
    (outcome,) = rec.upstream(READY)
    assert outcome == QueryOutcome(
        "s1", 1, OutcomeStatus.OK, ("BEGIN", "INSERT 0 2", "SELECT 2", "COMMIT"), 4, None, None,
        timedelta(seconds=0.25),
    )  # fmt: skip
    assert rec.queries == 1


def test_a_failing_simple_query_records_sqlstate_and_message(clock: Clock) -> None:
    rec = recorder(clock)
    rec.client(Query("SELECT 1/0"))
    assert rec.upstream(ErrorResponse.error("22012", "division by zero")) == []
    (outcome,) = rec.upstream(READY)
    assert isinstance(outcome, QueryOutcome)
    assert (outcome.status, outcome.sqlstate, outcome.error) == (
        OutcomeStatus.ERROR, "22012", "division by zero",
    )  # fmt: skip


def test_the_extended_protocol_records_parse_bind_execute(clock: Clock) -> None:
    rec = recorder(clock, QueryLimits(max_param_bytes=4))
    events = rec.client(Parse("s", "SELECT $1, $2, $3, $4", (25, 17, 25, 25)))
    assert events == [
        ParseStatement("s1", 1, "s", "SELECT $1, $2, $3, $4", 21, False, (25, 17, 25, 25))
    ]
    (bind,) = rec.client(
        Bind("p", "s", (0, 1, 0, 0), (b"abc", b"\x00\x01\x02\x03\x04", None, b"toolong"))
    )
    assert bind == BindPortal(
        "s1", 2, "p", "s",
        (Param("abc", False, 3), Param(base64.b64encode(b"\0\1\2\3").decode(), True, 5, True),
         Param(None), Param("tool", False, 7, True)),
        0, False,
    )  # fmt: skip
    assert rec.client(Execute("p", 10)) == [ExecutePortal("s1", 3, "p", 10)]
    assert rec.client(Sync()) == []
    assert rec.upstream(ParseComplete()) == []
    assert rec.upstream(BindComplete()) == []
    assert outcomes(rec.upstream(PortalSuspended())) == [(3, OutcomeStatus.SUSPENDED, ())]
    assert rec.upstream(READY) == []
    assert rec.queries == 1


def test_an_error_in_a_batch_skips_the_rest_up_to_sync(clock: Clock) -> None:
    rec = recorder(clock)
    for message in (Parse("", "SELECT bad", ()), Bind("", ""), Describe("P", ""), Execute(""),
                    Sync(), Query("SELECT 1")):  # fmt: skip
        rec.client(message)
    error = ErrorResponse.error("42703", 'column "bad" does not exist')
    assert outcomes(rec.upstream(error)) == [(1, OutcomeStatus.ERROR, ())]
    assert outcomes(rec.upstream(READY)) == [
        (2, OutcomeStatus.SKIPPED, ()), (3, OutcomeStatus.SKIPPED, ()),
    ]  # fmt: skip
    rec.upstream(CommandComplete("SELECT 1"))
    assert outcomes(rec.upstream(READY)) == [(4, OutcomeStatus.OK, ("SELECT 1",))]


def test_describe_and_close_answers_keep_the_queue_in_step(clock: Clock) -> None:
    rec = recorder(clock)
    for message in (Parse("a", "SELECT 1", ()), Describe("S", "a"), Bind("", "a"), Execute(""),
                    Close("S", "a"), Sync()):  # fmt: skip
        rec.client(message)
    for answer in (ParseComplete(), NoData(), BindComplete()):
        assert rec.upstream(answer) == []
    assert outcomes(rec.upstream(EmptyQueryResponse())) == [(3, OutcomeStatus.OK, ())]


def test_copy_in_and_out_are_recorded_with_their_bytes(clock: Clock) -> None:
    rec = recorder(clock)
    rec.client(Query("COPY t FROM STDIN"))
    rec.upstream(CopyInResponse(0, (0,)))
    rec.client(CopyData(b"1\n2\n"))
    rec.client(CopyData(b"3\n"))
    rec.client(CopyDone())
    events = rec.upstream(CommandComplete("COPY 3"))
    assert events == [CopyTransfer("s1", 1, CopyDirection.IN, 6)]
    assert outcomes(rec.upstream(READY)) == [(1, OutcomeStatus.OK, ("COPY 3",))]
    rec.client(Query("COPY t TO STDOUT"))
    rec.upstream(CopyOutResponse(0, (0,)))
    rec.upstream(CopyData(b"1\n2\n3\n"))
    rec.upstream(CopyDone())
    assert rec.upstream(CommandComplete("COPY 3")) == [CopyTransfer("s1", 2, CopyDirection.OUT, 6)]


def test_a_function_call_records_its_arguments_and_outcome(clock: Clock) -> None:
    rec = recorder(clock)
    (call,) = rec.client(FunctionCall(1598, (1,), (b"\x00\x00\x00\x07",)))
    assert call == FunctionCalled("s1", 1, 1598, (Param("AAAABw==", True, 4),), 0)
    assert outcomes(rec.upstream(READY)) == [(1, OutcomeStatus.OK, ())]


def test_password_statements_hide_their_bind_values(clock: Clock) -> None:
    rec = recorder(clock)
    rec.client(Parse("pw", "ALTER ROLE bob PASSWORD $1", ()))
    (bind,) = rec.client(Bind("", "pw", (), (b"hunter2hunter2",)))
    assert isinstance(bind, BindPortal)
    assert bind.redacted
    assert bind.params == (Param("***", size=14),)
    rec.client(Parse("pw", "SELECT $1", ()))  # the name is reused for something harmless
    (bind,) = rec.client(Bind("", "pw", (), (b"visible",)))
    assert isinstance(bind, BindPortal)
    assert bind.params == (Param("visible", size=7),)


def test_secrets_in_text_are_redacted_before_the_cut(clock: Clock) -> None:
    rec = recorder(clock, QueryLimits(max_text_bytes=30, max_param_bytes=20))
    text = "ALTER ROLE bob PASSWORD 'a-long-secret-value-here' VALID UNTIL 'infinity'"
    (query,) = rec.client(Query(text))
    assert isinstance(query, SimpleQuery)
    assert "secret" not in query.text
    assert query.truncated
    assert query.text_bytes > 30
    (bind,) = rec.client(Bind("", "", (), (b"host=x password=abcdefghijklmnop",)))
    assert isinstance(bind, BindPortal)
    assert "abcdefgh" not in str(bind.params[0].value)


def test_the_values_of_one_message_share_a_size_budget(clock: Clock) -> None:
    rec = recorder(clock, QueryLimits(max_text_bytes=10, max_param_bytes=4))
    (bind,) = rec.client(Bind("", "", (), (b"aaaa", b"bbbb", b"cccc", b"dddd")))
    assert isinstance(bind, BindPortal)
    assert [p.value for p in bind.params] == ["aaaa", "bbbb", "cccc"]
    assert bind.params_omitted == 1


def test_queries_without_an_answer_are_unfinished_at_the_end(clock: Clock) -> None:
    rec = recorder(clock)
    rec.client(Query("SELECT pg_sleep(600)"))
    assert outcomes(rec.finish()) == [(1, OutcomeStatus.UNFINISHED, ())]


@pytest.mark.parametrize(
    ("tag", "rows"),
    [("INSERT 0 5", 5), ("SELECT 3", 3), ("UPDATE 0", 0), ("CREATE TABLE", None), ("BEGIN", None)],
)
def test_rows_come_from_the_command_tag(tag: str, rows: int | None) -> None:
    assert rows_of(tag) == rows


def test_an_error_at_sync_does_not_shift_the_next_batch(clock: Clock) -> None:
    """A deferred constraint fails at the implicit COMMIT of Sync: the next batch still lines up."""
    rec = recorder(clock)
    for message in (Bind("", "s"), Execute(""), Sync(), Bind("", "s"), Execute(""), Sync()):
        rec.client(message)
    rec.upstream(BindComplete())
    assert outcomes(rec.upstream(CommandComplete("INSERT 0 1"))) == [
        (2, OutcomeStatus.OK, ("INSERT 0 1",)),
    ]  # fmt: skip
    assert rec.upstream(ErrorResponse.error("23503", "violates foreign key constraint")) == []
    assert rec.upstream(READY) == []
    rec.upstream(BindComplete())
    assert outcomes(rec.upstream(CommandComplete("INSERT 0 1"))) == [
        (4, OutcomeStatus.OK, ("INSERT 0 1",)),
    ]  # fmt: skip
