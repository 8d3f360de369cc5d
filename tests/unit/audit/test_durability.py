"""SECURITY.md rows 40-41: fsync policies, group commit, and failing closed on a write error.

fsyncs are counted (and held) by an injected file system; time moves only with the fake clock,
and the background thread is woken with `kick()` after the clock moves.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from proxy.audit.log import AuditUnavailable, FsyncPolicy, SinkOptions
from proxy.audit.verify import verify
from tests.fixtures.clock import FakeClock
from tests.unit.audit.helpers import (
    EIO,
    ENOSPC,
    KEY,
    FaultyFs,
    event,
    eventually,
    head_seq,
    open_log,
    records,
)


def test_always_completes_only_after_an_fsync_and_batches_a_burst(tmp_path: Path) -> None:
    fs = FaultyFs()
    log = open_log(tmp_path / "audit.jsonl", fs=fs)
    fs.hold, fs.fsync_entered = threading.Event(), threading.Event()
    first = log.durable(log.append(event(0)))
    assert fs.fsync_entered.wait(5)  # the thread is inside the fsync for record 1
    before = fs.fsyncs
    burst = [log.durable(log.append(event(n))) for n in range(1, 6)]
    assert not first.done()
    assert not any(f.done() for f in burst)
    fs.hold.set()
    for future in [first, *burst]:
        future.result(5)
    assert fs.fsyncs - before == 2  # one for record 1, one for the five written meanwhile
    log.close()
    assert verify(tmp_path / "audit.jsonl", KEY).ok


def test_wait_durable_blocks_until_the_fsync(tmp_path: Path) -> None:
    fs = FaultyFs()
    log = open_log(tmp_path / "audit.jsonl", fs=fs)
    before = fs.fsyncs
    ticket = log.append(event())
    log.wait_durable(ticket, timeout=5)
    assert fs.fsyncs > before
    assert log.durable_seq >= ticket
    log.close()


def test_interval_fsyncs_when_the_interval_has_passed(tmp_path: Path) -> None:
    fs, clock = FaultyFs(), FakeClock()
    options = SinkOptions(FsyncPolicy.INTERVAL, fsync_interval=0.2, head_interval=3600)
    log = open_log(tmp_path / "audit.jsonl", fs=fs, clock=clock, options=options)
    ticket = log.append(event())
    assert log.durable(ticket).done()  # interval promises nothing per record
    before = fs.fsyncs
    log.kick()
    assert log.durable_seq < ticket
    clock.advance(0.2)
    log.kick()
    eventually(lambda: log.durable_seq >= ticket)
    assert fs.fsyncs == before + 1
    log.close()


def test_never_fsyncs_only_for_the_head_checkpoint(tmp_path: Path) -> None:
    fs, clock = FaultyFs(), FakeClock()
    options = SinkOptions(FsyncPolicy.NEVER, head_interval=1.0)
    path = tmp_path / "audit.jsonl"
    log = open_log(path, fs=fs, clock=clock, options=options)
    before = fs.fsyncs
    ticket = log.append(event())
    clock.advance(0.5)
    log.kick()
    assert fs.fsyncs == before
    clock.advance(0.5)
    log.kick()
    eventually(lambda: head_seq(path) == ticket)
    assert log.durable_seq == ticket  # the head never anchors what is not on disk
    log.close()


@pytest.mark.parametrize("partial", [False, True])
def test_a_full_disk_on_write_fails_closed(tmp_path: Path, partial: bool) -> None:
    fs = FaultyFs()
    path = tmp_path / "audit.jsonl"
    log = open_log(path, fs=fs)
    log.append(event(0))
    fs.write_error, fs.partial_write = ENOSPC, partial
    with pytest.raises(AuditUnavailable) as raised:
        log.append(event(1))
    assert raised.value.sqlstate == "53100"
    assert raised.value.message.startswith("pgwarden: the audit log cannot be written")
    assert not log.healthy
    assert log.write_errors == 1
    fs.write_error = None  # even with space again, the log stays failed until it resumes
    with pytest.raises(AuditUnavailable):
        log.append(event(2))
    with pytest.raises(AuditUnavailable):
        log.durable(log.last_seq + 1).result(1)
    log.close()
    assert verify(path, KEY).ok  # the partial line was cut off again
    assert [r.get("user") for r in records(path) if r["kind"] == "login.failed"] == ["user0"]


def test_a_torn_line_that_could_not_be_cut_is_sealed_at_the_next_open(tmp_path: Path) -> None:
    fs = FaultyFs()
    path = tmp_path / "audit.jsonl"
    log = open_log(path, fs=fs)
    fs.write_error, fs.partial_write, fs.truncate_error = ENOSPC, True, EIO
    with pytest.raises(AuditUnavailable):
        log.append(event())
    log.close()
    assert not verify(path, KEY).ok  # the half line is there
    open_log(path).close()
    assert [r["kind"] for r in records(path)][-3] == "audit.recovery"
    assert verify(path, KEY).ok


def test_an_fsync_error_fails_the_waiters_and_later_appends(tmp_path: Path) -> None:
    fs = FaultyFs()
    path = tmp_path / "audit.jsonl"
    log = open_log(path, fs=fs)
    fs.fsync_error = EIO
    future = log.durable(log.append(event()))
    with pytest.raises(AuditUnavailable) as raised:
        future.result(5)
    assert raised.value.sqlstate == "58030"
    assert not log.healthy
    assert log.write_errors >= 1
    with pytest.raises(AuditUnavailable):
        log.append(event())
    log.close()
    assert verify(path, KEY).ok


def test_a_failed_log_resumes_with_a_recovery_record(tmp_path: Path) -> None:
    fs, clock = FaultyFs(), FakeClock()
    path = tmp_path / "audit.jsonl"
    options = SinkOptions(head_interval=3600, retry_interval=5.0)
    log = open_log(path, fs=fs, clock=clock, options=options)
    acknowledged = log.durable_seq
    fs.fsync_error = ENOSPC
    with pytest.raises(AuditUnavailable):
        log.wait_durable(log.append(event(1)), timeout=5)
    fs.fsync_error = None
    clock.advance(4)
    log.kick()
    assert not log.healthy
    clock.advance(1)
    log.kick()
    eventually(lambda: log.healthy)
    log.wait_durable(log.append(event(2)), timeout=5)
    log.close()
    (recovery,) = [r for r in records(path) if r["kind"] == "audit.recovery"]
    assert str(recovery["reason"]).startswith("resumed after a write error")
    assert recovery["unacknowledged_after"] == acknowledged
    assert verify(path, KEY).ok


def test_appends_from_many_threads_make_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    options = SinkOptions(head_interval=3600, max_file_bytes=16 * 1024)
    log = open_log(path, options=options)
    tickets: list[int] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(100):
            ticket = log.append(event(n * 1000 + i))
            if i % 10 == 0:
                log.wait_durable(ticket, timeout=5)
            with lock:
                tickets.append(ticket)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    assert len(set(tickets)) == 800
    report = verify(path, KEY)
    assert report.ok, report.summary()
    assert len(report.files) > 1
