"""`AuditLog.append_many` and the background thread's idle wait.

`append_many(events)` writes several records with one write, returns the last seq, and chains
them like single appends (the verifier agrees); a write error writes none of them, fails the log
closed and raises AuditUnavailable. The thread sleeps the full `_MAX_WAIT` when it has nothing to
do (it used to wake every millisecond), and an append after an idle period wakes it, so that the
record is still fsynced within `fsync_interval`. Time moves only with the fake clock; the thread
is woken with `kick()` after the clock moves, as in test_durability.py.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

import proxy.audit.log
from proxy.audit.encode import EncodedRecord
from proxy.audit.events import AuditEvent
from proxy.audit.log import AuditLog, AuditUnavailable, FsyncPolicy, SinkOptions
from proxy.audit.verify import verify
from tests.fixtures.clock import FakeClock
from tests.unit.audit.helpers import (
    ENOSPC,
    KEY,
    FaultyFs,
    event,
    eventually,
    head_seq,
    open_log,
    records,
)

MAX_WAIT = 1.0  # log._MAX_WAIT, as the module promises


class WritesFs(FaultyFs):
    """Remembers every write of record lines (heads are written too, but hold no `kind`), and
    fails a write that holds `poison`."""

    def __init__(self) -> None:
        super().__init__()
        self.record_writes: list[bytes] = []
        self.poison: bytes | None = None  # a write holding this fails with ENOSPC

    def write(self, fd: int, data: bytes) -> int:
        if self.poison is not None and self.poison in data:
            raise OSError(ENOSPC, "No space left on device")
        if b'"kind":' in data:
            self.record_writes.append(bytes(data))
        return super().write(fd, data)


def query_events(n: int) -> list[AuditEvent | EncodedRecord]:
    """An outcome and a query record, as the recorder makes them (already encoded), and an
    event encoded by the sink: one append_many takes both kinds."""
    outcome = f'{{"n":{n - 1},"status":"ok","tags":["SELECT 1"],"rows":1,"duration":0.00025}}'
    query = f'"session_id":"s1","n":{n},"steps":[{{"query":"SELECT {n}"}}]'
    done = f'"session_id":"s1","done":[{outcome}]'
    return [EncodedRecord("query.done", done), EncodedRecord("query.batch", query), event(n)]


def interval_options(**overrides: float) -> SinkOptions:
    values = {"fsync_interval": 0.2, "head_interval": 3600.0, "retry_interval": 0.0, **overrides}
    return SinkOptions(FsyncPolicy.INTERVAL, **values)  # type: ignore[arg-type]


def timeout(log: AuditLog) -> float:
    with log._lock:
        return log._timeout_locked()


# -- append_many --------------------------------------------------------------------------------


def test_append_many_writes_its_records_with_one_write_and_returns_the_last_seq(
    tmp_path: Path,
) -> None:
    fs = WritesFs()
    path = tmp_path / "audit.jsonl"
    log = open_log(path, fs=fs)
    before, writes = log.last_seq, len(fs.record_writes)
    ticket = log.append_many(query_events(2))
    assert ticket == before + 3 == log.last_seq
    (data,) = fs.record_writes[writes:]
    lines = [json.loads(line) for line in data.splitlines()]
    assert [(r["seq"], r["kind"]) for r in lines] == [
        (before + 1, "query.done"), (before + 2, "query.batch"), (ticket, "login.failed"),
    ]  # fmt: skip
    assert path.read_bytes().endswith(data)
    log.wait_durable(ticket, timeout=5)
    log.close()


def test_records_of_append_many_chain_with_single_appends(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = open_log(path)
    first = log.append(event(0))
    assert log.append_many(query_events(1)) == first + 3
    assert log.append(event(9)) == first + 4
    assert log.append_many(query_events(2)[:1]) == first + 5
    log.close()
    report = verify(path, KEY)
    assert report.ok, report.summary()
    body = [r for r in records(path) if first <= r["seq"] <= first + 5]
    assert [r["seq"] for r in body] == list(range(first, first + 6))
    assert [r["kind"] for r in body] == [
        "login.failed", "query.done", "query.batch", "login.failed", "login.failed",
        "query.done",
    ]  # fmt: skip
    assert all(r["prev"] == p["mac"] for p, r in itertools.pairwise(body))
    assert body[1]["done"] == [
        {"n": 0, "status": "ok", "tags": ["SELECT 1"], "rows": 1, "duration": 0.00025}
    ]
    assert body[2]["steps"] == [{"query": "SELECT 1"}]


@pytest.mark.parametrize("how", ["refused", "half_written", "second_record"])
def test_a_write_error_writes_none_of_the_records(tmp_path: Path, how: str) -> None:
    fs = WritesFs()
    path = tmp_path / "audit.jsonl"
    log = open_log(path, fs=fs)
    last = log.append(event(0))
    size = path.stat().st_size
    if how == "second_record":  # only a write holding the batch's second record fails
        fs.poison = b'{"query":"SELECT 5"}'
    else:
        fs.write_error, fs.partial_write = ENOSPC, how == "half_written"
    with pytest.raises(AuditUnavailable) as raised:
        log.append_many(query_events(5))
    assert raised.value.sqlstate == "53100"
    assert path.stat().st_size == size  # a half-written batch is cut off again
    assert log.last_seq == last
    assert not log.healthy
    assert log.write_errors == 1
    fs.write_error = fs.poison = None
    with pytest.raises(AuditUnavailable):  # failed closed until it resumes
        log.append_many([event(6)])
    log.close()
    assert verify(path, KEY).ok
    assert not [r for r in records(path) if r["kind"].startswith("query.")]
    assert [r["user"] for r in records(path) if r["kind"] == "login.failed"] == ["user0"]


def test_append_many_of_nothing_returns_the_current_seq_and_writes_nothing(
    tmp_path: Path,
) -> None:
    fs = WritesFs()
    path = tmp_path / "audit.jsonl"
    log = open_log(path, fs=fs)
    ticket = log.append(event(0))
    size, writes = path.stat().st_size, len(fs.record_writes)
    nothing: Sequence[AuditEvent | EncodedRecord] = ()
    assert log.append_many(nothing) == ticket
    assert log.append_many([]) == ticket
    assert (path.stat().st_size, len(fs.record_writes)) == (size, writes)
    assert log.last_seq == ticket
    log.close()
    assert verify(path, KEY).ok


# -- the thread's idle wait -----------------------------------------------------------------------


def test_the_module_waits_at_most_one_second() -> None:
    assert proxy.audit.log._MAX_WAIT == MAX_WAIT


@pytest.mark.parametrize("policy", list(FsyncPolicy))
def test_with_nothing_to_do_the_thread_sleeps_the_full_max_wait(
    tmp_path: Path, policy: FsyncPolicy
) -> None:
    clock = FakeClock()
    options = SinkOptions(policy, fsync_interval=0.2, head_interval=0.5, retry_interval=0)
    log = open_log(tmp_path / "audit.jsonl", clock=clock, options=options)
    assert timeout(log) == MAX_WAIT  # open synced everything and wrote the head
    clock.advance(10)  # every interval is long past: nothing is due, as there is no work
    log.kick()
    assert timeout(log) == MAX_WAIT
    log.close()


def test_interval_waits_only_as_long_as_the_next_fsync_or_head_is_due(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "audit.jsonl"
    log = open_log(path, clock=clock, options=interval_options(head_interval=0.5))
    ticket = log.append(event())
    assert timeout(log) == pytest.approx(0.2)  # the fsync is due at the interval
    clock.advance(0.2)
    log.kick()
    eventually(lambda: log.durable_seq >= ticket)
    assert timeout(log) == pytest.approx(0.3)  # synced; the head is due 0.5 s after the last
    clock.advance(0.3)
    log.kick()
    eventually(lambda: head_seq(path) == ticket)
    # Synced and anchored: nothing to do (once the thread, which notes the head just after
    # writing its file, has noted it).
    eventually(lambda: timeout(log) == MAX_WAIT)
    clock.advance(5)
    assert timeout(log) == MAX_WAIT
    log.close()
    assert verify(path, KEY).ok


def test_an_append_after_an_idle_period_wakes_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle thread would sleep a minute here: only the append's own wake-up gets the record
    fsynced (no kick() in this test)."""
    monkeypatch.setattr(proxy.audit.log, "_MAX_WAIT", 60.0)
    fs, clock = FaultyFs(), FakeClock()
    log = open_log(tmp_path / "audit.jsonl", fs=fs, clock=clock, options=interval_options())
    assert timeout(log) == 60.0
    clock.advance(5)  # an idle period, longer than fsync_interval
    before = fs.fsyncs
    ticket = log.append_many(query_events(1))
    eventually(lambda: log.durable_seq >= ticket)
    assert fs.fsyncs == before + 1
    log.close()


def test_an_append_soon_after_a_sync_is_fsynced_when_the_interval_ends(tmp_path: Path) -> None:
    fs, clock = FaultyFs(), FakeClock()
    log = open_log(tmp_path / "audit.jsonl", fs=fs, clock=clock, options=interval_options())
    clock.advance(5)  # idle
    first = log.append(event(1))
    eventually(lambda: log.durable_seq >= first)  # long since the last fsync: at once
    clock.advance(0.05)
    second = log.append(event(2))
    log.kick()
    assert log.durable_seq < second  # 0.05 s after the last fsync: not yet
    clock.advance(0.1)
    log.kick()
    assert log.durable_seq < second
    clock.advance(0.1)  # the interval is over (0.25 s, clear of float rounding at 0.2)
    log.kick()
    eventually(lambda: log.durable_seq >= second)
    log.close()
