"""The session recorder: one record per round trip, outcomes settled in protocol order.

Each test feeds client messages (as the relay hands them over: one list per chunk) and the
database's answers, and reads the records back as the log would hold them (JSON). The shapes
are those of `proxy/audit/query_events.py`; `test_recorder_model.py` checks random sessions
against a model of the protocol.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from proxy.audit.encode import EncodedRecord
from proxy.audit.query_events import CopyDirection
from proxy.audit.recorder import MAX_STEPS, UPSTREAM_TYPES, SessionRecorder, Written
from proxy.audit.shaping import QueryLimits
from proxy.wire import (
    Bind,
    BindComplete,
    Close,
    CloseComplete,
    CommandComplete,
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
    RemoteProtocolError,
    Sync,
    TransactionStatus,
)
from proxy.wire.framing import Frame
from tests.unit.audit.helpers import frames_of, recorder

READY = ReadyForQuery(TransactionStatus.IDLE)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def as_json(written: list[Written]) -> list[dict[str, Any]]:
    """Records as the log holds them: kind and members."""
    result = []
    for record in written:
        if isinstance(record, EncodedRecord):
            result.append({"kind": record.kind, **json.loads("{" + record.members + "}")})
        else:
            result.append({"kind": record.kind, **record.to_record()})
    return result


def send(rec: SessionRecorder, *messages: Any) -> list[dict[str, Any]]:
    """One chunk from the client: the records written before it is forwarded."""
    return as_json(rec.client_frames(frames_of(*messages)))


def answer(rec: SessionRecorder, *messages: Any) -> bool:
    """The database's answers; only the types the relay hands over reach the recorder."""
    return rec.upstream_frames([f for f in frames_of(*messages) if f.type in UPSTREAM_TYPES])


def waiting(rec: SessionRecorder) -> list[dict[str, Any]]:
    return as_json(rec.take_waiting())


def test_a_simple_query_is_one_record_and_its_outcome_rides_on_the_next() -> None:
    clock = Clock()
    rec = recorder(monotonic=clock)
    text = "BEGIN; INSERT INTO t VALUES (1), (2); SELECT * FROM t; COMMIT"
    assert send(rec, Query(text)) == [
        {"kind": "query.batch", "session_id": "s1", "n": 1, "steps": [{"query": text}]}
    ]
    clock.now += 0.25
    tags = ("BEGIN", "INSERT 0 2", "SELECT 2", "COMMIT")
    assert answer(rec, *map(CommandComplete, tags), READY)
    (record,) = send(rec, Query("SELECT 1"))
    assert record["n"] == 2
    assert record["done"] == [
        {"n": 1, "status": "ok", "tags": list(tags), "rows": 4, "duration": 0.25}
    ]
    assert rec.queries == 2


def test_a_failing_simple_query_names_its_sqlstate_message_and_step() -> None:
    rec = recorder()
    send(rec, Query("SELECT 1; SELECT 1/0; SELECT 3"))
    answer(rec, CommandComplete("SELECT 1"), ErrorResponse.error("22012", "division by zero"))
    assert not rec.done  # it ends at its ReadyForQuery
    answer(rec, READY)
    ((done,),) = [r["done"] for r in waiting(rec)]
    assert done == {
        "n": 1, "status": "error", "tags": ["SELECT 1"], "rows": 1, "duration": 0.0,
        "sqlstate": "22012", "error": "division by zero", "step": 0,
    }  # fmt: skip


def test_an_extended_batch_is_one_record_with_every_step() -> None:
    rec = recorder(limits=QueryLimits(max_param_bytes=4))
    values = (b"abc", b"\x00\x01\x02\x03\x04", None, b"toolong")
    parse = Parse("s", "SELECT $1, $2, $3, $4", (25, 17, 25, 25))
    batch = [parse, Bind("p", "s", (0, 1, 0, 0), values), Describe("P", "p"), Execute("p", 10),
             Sync()]  # fmt: skip
    assert send(rec, *batch) == [
        {"kind": "query.batch", "session_id": "s1", "n": 1, "steps": [
            {"parse": "s", "text": "SELECT $1, $2, $3, $4", "param_types": [25, 17, 25, 25]},
            {"bind": "p", "statement": "s", "params": [
                "abc",
                {"base64": base64.b64encode(b"\0\1\2\3").decode(), "bytes": 5, "truncated": True},
                None,
                {"text": "tool", "bytes": 7, "truncated": True},
            ]},
            {"execute": "p", "max_rows": 10},
        ]},
    ]  # fmt: skip
    answer(rec, ParseComplete(), BindComplete(), PortalSuspended(), READY)
    ((done,),) = [r["done"] for r in waiting(rec)]
    assert (done["status"], done["tags"], done["rows"]) == ("ok", [None], None)
    assert rec.queries == 1


def test_an_error_names_the_failing_step_and_the_batch_stops_there() -> None:
    rec = recorder()
    records = send(
        rec, Parse("", "SELECT bad", ()), Bind("", ""), Describe("P", ""), Execute(""), Sync(),
        Query("SELECT 1"),
    )  # fmt: skip
    assert [(r["n"], len(r["steps"])) for r in records] == [(1, 3), (2, 1)]
    answer(rec, ErrorResponse.error("42703", 'column "bad" does not exist'), READY)
    answer(rec, CommandComplete("SELECT 1"), READY)
    ((first, second),) = [r["done"] for r in waiting(rec)]
    assert (first["n"], first["status"], first["step"], first["sqlstate"]) == (
        1, "error", 0, "42703",
    )  # fmt: skip
    assert (second["n"], second["status"], second["tags"]) == (2, "ok", ["SELECT 1"])


def test_a_batch_split_across_chunks_goes_on_in_the_next_record() -> None:
    rec = recorder()
    (first,) = send(rec, Parse("", "INSERT INTO t VALUES ($1)", ()), Bind("", "", (), (b"1",)),
                    Execute(""))  # fmt: skip
    assert first["open"] is True
    assert answer(rec, ParseComplete(), BindComplete(), CommandComplete("INSERT 0 1")) is False
    (second,) = send(rec, Bind("", "", (), (b"2",)), Execute(""), Sync())
    assert "open" not in second
    assert second["done"][0] == {  # the batch went on: the first part is settled
        "n": 1, "status": "ok", "tags": ["INSERT 0 1"], "rows": 1, "duration": 0.0,
    }  # fmt: skip
    answer(rec, BindComplete(), ErrorResponse.error("23505", "duplicate key"), READY)
    ((done,),) = [r["done"] for r in waiting(rec)]
    assert (done["n"], done["status"], done["step"], done["tags"]) == (2, "error", 1, [])


def test_an_error_in_an_open_record_skips_the_rest_of_its_batch() -> None:
    rec = recorder()
    send(rec, Parse("", "SELECT bad", ()), Bind("", ""), Execute(""))
    send(rec, Bind("", ""), Execute(""))
    send(rec, Sync())  # nothing to record: the Sync ends the last record written
    answer(rec, ErrorResponse.error("42703", "no such column"))
    answer(rec, READY)
    ((first, second),) = [r["done"] for r in waiting(rec)]
    assert (first["n"], first["status"], first["step"]) == (1, "error", 0)
    assert (second["n"], second["status"], second["tags"]) == (2, "skipped", [])


def test_a_sync_alone_settles_the_open_record_at_its_ready_for_query() -> None:
    rec = recorder()
    send(rec, Bind("", "s"), Execute(""))
    answer(rec, BindComplete(), CommandComplete("UPDATE 3"))
    assert not rec.done  # open: its batch may go on
    assert send(rec, Sync()) == []
    assert answer(rec, READY)
    ((done,),) = [r["done"] for r in waiting(rec)]
    assert (done["n"], done["status"], done["rows"]) == (1, "ok", 3)


def test_an_error_at_sync_belongs_to_the_batch_with_no_step() -> None:
    """A deferred constraint fails at the implicit COMMIT of Sync: the next batch still lines up."""
    rec = recorder()
    send(rec, Bind("", "s"), Execute(""), Sync(), Bind("", "s"), Execute(""), Sync())
    answer(rec, BindComplete(), CommandComplete("INSERT 0 1"))
    answer(rec, ErrorResponse.error("23503", "violates foreign key constraint"), READY)
    answer(rec, BindComplete(), CommandComplete("INSERT 0 1"), READY)
    ((first, second),) = [r["done"] for r in waiting(rec)]
    assert (first["status"], first["tags"], first["sqlstate"], first["step"]) == (
        "error", ["INSERT 0 1"], "23503", None,
    )  # fmt: skip
    assert (second["n"], second["status"], second["tags"]) == (2, "ok", ["INSERT 0 1"])


def test_close_is_recorded_and_describe_answers_are_not_awaited() -> None:
    rec = recorder()
    (record,) = send(rec, Parse("a", "", ()), Describe("S", "a"), Bind("", "a"), Execute(""),
                     Close("S", "a"), Close("P", ""), Sync())  # fmt: skip
    assert record["steps"][3:] == [
        {"close": "statement", "name": "a"}, {"close": "portal", "name": ""},
    ]  # fmt: skip
    answer(rec, ParseComplete(), NoData(), BindComplete(), EmptyQueryResponse(), CloseComplete(),
           CloseComplete(), READY)  # fmt: skip
    ((done,),) = [r["done"] for r in waiting(rec)]
    assert (done["status"], done["tags"]) == ("ok", [""])


def test_a_long_batch_in_one_chunk_is_cut_into_open_records() -> None:
    rec = recorder()
    steps = [Bind("", "s", (), (b"1",)), Execute("")] * MAX_STEPS
    records = send(rec, *steps, Sync())
    assert [len(r["steps"]) for r in records] == [MAX_STEPS, MAX_STEPS]
    assert [r.get("open", False) for r in records] == [True, False]
    for _ in range(MAX_STEPS):
        answer(rec, BindComplete(), CommandComplete("SELECT 1"))
    answer(rec, READY)
    done = [outcome for r in waiting(rec) for outcome in r["done"]]
    assert [(d["n"], d["rows"]) for d in done] == [(1, MAX_STEPS // 2), (2, MAX_STEPS // 2)]


def test_a_copy_in_is_a_record_of_its_own_with_its_bytes() -> None:
    counted = {CopyDirection.IN: 0, CopyDirection.OUT: 0}
    rec = recorder(copy_bytes=counted.__getitem__)
    send(rec, Query("COPY t FROM STDIN"))
    answer(rec, CopyInResponse(0, (0,)))
    counted[CopyDirection.IN] += 6  # the relay counts CopyData without handing it over
    send(rec, CopyDone())
    answer(rec, CommandComplete("COPY 3"), READY)
    copy, done = waiting(rec)
    assert copy == {"kind": "query.copy", "session_id": "s1", "n": 1, "direction": "in",
                    "bytes": 6}  # fmt: skip
    assert done["done"][0]["tags"] == ["COPY 3"]


def test_a_copy_out_is_written_before_the_next_query_which_carries_its_outcome() -> None:
    counted = {CopyDirection.IN: 0, CopyDirection.OUT: 0}
    rec = recorder(copy_bytes=counted.__getitem__)
    send(rec, Query("COPY t TO STDOUT"))
    counted[CopyDirection.OUT] += 9
    answer(rec, CopyOutResponse(0, (0,)), CopyDone(), CommandComplete("COPY 1"), READY)
    copy, query = send(rec, Query("SELECT 1"))
    assert (copy["kind"], copy["n"], copy["bytes"]) == ("query.copy", 1, 9)
    assert (query["kind"], query["done"][0]["n"]) == ("query.batch", 1)


def test_a_function_call_is_a_record_of_its_own_with_its_arguments() -> None:
    rec = recorder()
    (call,) = send(rec, FunctionCall(1598, (1,), (b"\x00\x00\x00\x07",)))
    assert call == {
        "kind": "query.function_call", "session_id": "s1", "n": 1, "function_oid": 1598,
        "args": [{"base64": "AAAABw=="}], "args_omitted": 0,
    }  # fmt: skip
    answer(rec, READY)
    ((done,),) = [r["done"] for r in waiting(rec)]
    assert (done["n"], done["status"]) == (1, "ok")


def test_password_statements_hide_their_bind_values() -> None:
    rec = recorder()
    (record,) = send(rec, Parse("pw", "ALTER ROLE bob PASSWORD $1", ()),
                     Bind("", "pw", (), (b"hunter2hunter2",)), Execute(""), Sync())  # fmt: skip
    assert record["steps"][1] == {"bind": "", "statement": "pw", "params": ["***"],
                                  "redacted": True}  # fmt: skip
    # The name is reused for something harmless, then closed and reused for a password again.
    (record,) = send(rec, Parse("pw", "SELECT $1", ()), Bind("", "pw", (), (b"visible",)), Sync())
    assert record["steps"][1]["params"] == ["visible"]
    send(rec, Parse("pw", "ALTER ROLE bob PASSWORD $1", ()), Close("S", "pw"), Sync())
    (record,) = send(rec, Bind("", "pw", (), (b"hunter2hunter2",)), Sync())
    assert record["steps"][0]["params"] == ["hunter2hunter2"]  # closed: not a password any more


def test_secrets_in_text_are_redacted_before_the_cut() -> None:
    rec = recorder(limits=QueryLimits(max_text_bytes=30, max_param_bytes=20))
    text = "ALTER ROLE bob PASSWORD 'a-long-secret-value-here' VALID UNTIL 'infinity'"
    (record,) = send(rec, Query(text))
    (step,) = record["steps"]
    assert "secret" not in step["query"]
    assert step["truncated"] is True
    assert step["bytes"] > 30
    (record,) = send(rec, Bind("", "", (), (b"host=x password=abcdefghijklmnop",)), Sync())
    assert "abcdefgh" not in json.dumps(record)


def test_the_values_of_one_message_share_a_size_budget() -> None:
    rec = recorder(limits=QueryLimits(max_text_bytes=10, max_param_bytes=4))
    (record,) = send(rec, Bind("", "", (), (b"aaaa", b"bbbb", b"cccc", b"dddd")), Sync())
    assert record["steps"][0]["params"] == ["aaaa", "bbbb", "cccc"]
    assert record["steps"][0]["omitted"] == 1


def test_round_trips_without_an_answer_are_unfinished_at_the_end() -> None:
    rec = recorder()
    send(rec, Parse("", "SELECT 1/0", ()), Bind("", ""), Execute(""), Sync())
    answer(rec, ParseComplete(), BindComplete(), ErrorResponse.error("22012", "division by zero"))
    send(rec, Query("SELECT pg_sleep(600)"))
    (finished,) = as_json(rec.finish())
    assert [(d["n"], d["status"]) for d in finished["done"]] == [(1, "error"), (2, "unfinished")]


@pytest.mark.parametrize(
    "message",
    [Frame(ord("Q"), b"SELECT 1"), Frame(ord("Q"), b"SELECT\x001\x00"), Frame(ord("Q"), b""),
     Frame(ord("E"), b"\x00"), Frame(ord("B"), b"\x00\x00\x00\x00\x00\x01"),
     Frame(ord("P"), b"s\x00")],
    ids=["query-unterminated", "query-trailing", "query-empty", "execute-short", "bind-short",
         "parse-short"],
)  # fmt: skip
def test_a_malformed_message_is_a_protocol_error(message: Frame) -> None:
    with pytest.raises(RemoteProtocolError):
        recorder().client_frames([message])
