"""Pairing round-trip records with their outcomes (`audit verify`'s report), and a log whose
runs wrote formats 2 and 3 verifying as one chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import proxy.audit.query_trail
import proxy.audit.sink_state
from proxy.audit.encode import EncodedRecord
from proxy.audit.query_trail import QueryTrail
from proxy.audit.records import GENESIS, Record
from proxy.audit.verify import verify
from proxy.wire import CommandComplete, Query, ReadyForQuery, TransactionStatus
from tests.unit.audit.helpers import KEY, frames_of, open_log, recorder, records


def record(seq: int, kind: str, **body: Any) -> Record:
    return Record(seq=seq, kind=kind, prev=GENESIS, mac=GENESIS, body={"kind": kind, **body})


def batch(seq: int, n: int, *done: int, session: str = "s1") -> Record:
    outcomes = [{"n": each, "status": "ok"} for each in done]
    return record(seq, "query.batch", session_id=session, n=n, steps=[], done=outcomes)


def trail(*records: Record) -> QueryTrail:
    followed = QueryTrail()
    for each in records:
        followed.see(each)
    return followed


def opened(seq: int, version: int = 3) -> Record:
    return record(seq, "audit.opened", format=version)


def test_round_trips_settled_by_a_later_record_are_not_reported() -> None:
    followed = trail(
        opened(1), batch(2, 1), batch(3, 2, 1),
        record(4, "query.function_call", session_id="s1", n=3, done=[{"n": 2}]),
        record(5, "query.done", session_id="s1", done=[{"n": 3}]),
    )  # fmt: skip
    assert followed.unsettled() == (0, ())


def test_an_outcome_settles_only_its_own_sessions_record() -> None:
    followed = trail(opened(1), batch(2, 1, session="a"), batch(3, 2, 1, session="b"))
    assert followed.unsettled() == (2, (2, 3))  # b's outcome of n=1 is not a's


def test_round_trips_a_stopped_run_left_without_outcome_are_unsettled() -> None:
    followed = trail(
        opened(1), batch(2, 1), batch(3, 2, 1),
        opened(4), batch(5, 1, 2), batch(6, 2),  # a new run: its n=... cannot settle seq 3
    )  # fmt: skip
    assert followed.unsettled() == (3, (3, 5, 6))


def test_records_of_a_format_2_run_are_taken_as_they_are() -> None:
    followed = trail(opened(1, version=2), record(2, "query.simple", session_id="s1", n=1))
    assert followed.unsettled() == (0, ())


def test_what_waits_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy.audit.query_trail, "MAX_PENDING", 2)
    monkeypatch.setattr(proxy.audit.query_trail, "MAX_LOST_KEPT", 3)
    followed = trail(opened(1), *(batch(seq, seq) for seq in range(2, 9)))
    assert len(followed.pending) == 2
    assert followed.unsettled() == (7, (2, 3, 4))


def test_a_log_of_a_format_2_run_then_a_format_3_run_verifies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    monkeypatch.setattr(proxy.audit.sink_state, "FORMAT_VERSION", 2)
    old = open_log(path)
    old.append_many([
        EncodedRecord("query.simple", '"session_id":"s0","n":1,"text":"SELECT 1","text_bytes":8,'
                                      '"truncated":false'),
        EncodedRecord("query.outcome", '"session_id":"s0","n":1,"status":"ok","tags":["SELECT 1"],'
                                       '"rows":1,"sqlstate":null,"error":null,"duration":0.001'),
    ])  # fmt: skip
    old.close()
    monkeypatch.undo()
    new = open_log(path)
    rec = recorder()
    new.append_many(rec.client_frames(frames_of(Query("SELECT 2"))))
    rec.upstream_frames(
        frames_of(CommandComplete("SELECT 1"), ReadyForQuery(TransactionStatus.IDLE))
    )
    new.append_many(rec.client_frames(frames_of(Query("SELECT 3"))))  # carries 1's outcome
    new.close()  # 2's outcome never written: pgwarden stopped first
    report = verify(path, KEY)
    assert report.ok, report.summary()
    assert [r["format"] for r in records(path) if r["kind"] == "audit.opened"] == [2, 3]
    (last,) = [r for r in records(path) if r.get("n") == 2 and r["kind"] == "query.batch"]
    assert (report.queries_unsettled, report.queries_unsettled_seqs) == (1, (last["seq"],))
    assert f"1 query record(s) with no outcome: still running, or written just before " \
           f"pgwarden stopped (seq {last['seq']})" in report.summary()  # fmt: skip
