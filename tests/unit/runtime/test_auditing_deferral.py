"""SessionAuditor writes a round trip's record at once and defers its outcome.

A query's record is in the log before `client_frames` returns (before the query is forwarded).
The outcome the database's answers complete waits: the session's next record carries it (one
record per round trip), or, when none comes, a timer ticking every OUTCOME_DELAY / 2 writes it
in a `query.done` record of its own; with no running event loop it is written at once.
`session_ended` and `flush` write what waits.

The Session is a real one over two unconnected Peers (the auditor only reads its id, clocks and
byte counters); the log is a real AuditLog on a temporary path with a fake clock, and its file
system remembers each write of record lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from proxy.audit.fsio import FileSystem
from proxy.audit.log import AuditLog, FsyncPolicy, SinkOptions
from proxy.audit.recorder import MAX_DONE
from proxy.audit.redact import Redactor
from proxy.audit.shaping import QueryLimits
from proxy.net.peer import Peer
from proxy.runtime.auditing import OUTCOME_DELAY, SessionAuditor
from proxy.session.session import Ending, EndReason, Session, SessionInfo, UpstreamHandle
from proxy.wire import (
    CommandComplete,
    FieldDescription,
    Frame,
    MessageReader,
    Query,
    ReadyForQuery,
    RowDescription,
    TransactionStatus,
    encode,
)
from proxy.wire.framing import NEED_DATA
from tests.unit.audit.helpers import open_log, records

TEST_TIMEOUT = 10.0
OPTIONS = SinkOptions(FsyncPolicy.INTERVAL, head_interval=3600, retry_interval=0)


class WritesFs(FileSystem):
    """Remembers every write of record lines (heads hold no `kind`)."""

    def __init__(self) -> None:
        self.record_writes: list[bytes] = []

    def write(self, fd: int, data: bytes) -> int:
        if b'"kind":' in data:
            self.record_writes.append(bytes(data))
        return super().write(fd, data)


def frames(*messages: Any) -> list[Frame]:
    reader = MessageReader()
    for message in messages:
        reader.feed(encode(message))
    result = []
    while (frame := reader.next_message()) is not NEED_DATA:
        assert isinstance(frame, Frame)
        result.append(frame)
    return result


def query(text: str) -> list[Frame]:
    return frames(Query(text))


def answers() -> list[Frame]:
    return frames(
        RowDescription((FieldDescription("?column?", type_oid=23, type_size=4),)),
        CommandComplete("SELECT 1"),
        ReadyForQuery(TransactionStatus.IDLE),
    )


async def make_session() -> Session:
    """A session whose peers never connect (Peer needs a running loop to be made)."""
    now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    info = SessionInfo(
        session_id="s1", user="alice", target="orders", access_level="read-only", grant_id="g1",
        upstream_role="ro", client_address="127.0.0.1", client_tls=False, application_name="",
        started_at=now, grant_ends_at=now + timedelta(hours=1), backend_process_id=4242,
    )  # fmt: skip

    async def reap() -> bool:
        return True

    return Session(
        info=info, client=Peer("client"), upstream=Peer("upstream"),
        upstream_handle=UpstreamHandle(cancel=lambda: None, terminate_backend=reap),
        cancel_process_id=7, cancel_secret=b"abcd", max_client_message=1 << 20,
        monotonic=lambda: 0.0, deadline=3600.0, started=0.0,
    )  # fmt: skip


def make_auditor(tmp_path: Path) -> tuple[SessionAuditor, AuditLog, WritesFs]:
    fs = WritesFs()
    log = open_log(tmp_path / "audit.jsonl", fs=fs, options=OPTIONS)
    return SessionAuditor(log, Redactor(), QueryLimits(), FsyncPolicy.INTERVAL), log, fs


def logged(tmp_path: Path) -> list[tuple[str, int | None, list[int]]]:
    """The session's records as (kind, n, the n of each outcome it carries), in log order."""
    return [
        (r["kind"], r.get("n"), [done["n"] for done in r.get("done", [])])
        for r in records(tmp_path / "audit.jsonl")
        if r["kind"].startswith(("query.", "session."))
    ]


def kinds_of(write: bytes) -> list[str]:
    return [line.split(b'"kind":"')[1].split(b'"')[0].decode() for line in write.splitlines()]


async def wait_for(condition: Callable[[], bool]) -> None:
    """Let the loop run (its timers fire) until `condition` holds; bounded by TEST_TIMEOUT."""
    while not condition():
        await asyncio.sleep(OUTCOME_DELAY / 4)


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            await test()

    asyncio.run(bounded())


def test_the_query_is_written_at_once_and_its_outcome_with_the_next_query(
    tmp_path: Path,
) -> None:
    auditor, log, fs = make_auditor(tmp_path)

    async def scenario() -> None:
        session = await make_session()
        assert auditor.client_frames(session, query("SELECT 1")) is None  # interval: no wait
        assert logged(tmp_path) == [("query.batch", 1, [])]
        auditor.upstream_frames(session, answers())
        assert logged(tmp_path) == [("query.batch", 1, [])]  # the outcome waits
        writes = len(fs.record_writes)
        auditor.client_frames(session, query("SELECT 2"))
        assert logged(tmp_path) == [("query.batch", 1, []), ("query.batch", 2, [1])]
        assert [kinds_of(w) for w in fs.record_writes[writes:]] == [["query.batch"]]
        await asyncio.sleep(OUTCOME_DELAY * 2)  # the timer finds nothing left to write
        assert len(fs.record_writes) == writes + 1

    run(scenario)
    log.close()


def test_without_a_next_query_the_outcome_is_written_by_the_timer(tmp_path: Path) -> None:
    auditor, log, _ = make_auditor(tmp_path)

    async def scenario() -> None:
        session = await make_session()
        auditor.client_frames(session, query("SELECT 1"))
        auditor.upstream_frames(session, answers())
        assert logged(tmp_path) == [("query.batch", 1, [])]
        await wait_for(lambda: len(logged(tmp_path)) == 2)
        assert logged(tmp_path) == [("query.batch", 1, []), ("query.done", None, [1])]
        auditor.client_frames(session, query("SELECT 2"))  # a later outcome gets a new timer
        auditor.upstream_frames(session, answers())
        assert logged(tmp_path)[-1] == ("query.batch", 2, [])
        await wait_for(lambda: len(logged(tmp_path)) == 4)
        assert logged(tmp_path)[-1] == ("query.done", None, [2])

    run(scenario)
    log.close()


def test_an_outcome_that_a_next_query_carried_is_not_written_again_by_the_timer(
    tmp_path: Path,
) -> None:
    auditor, log, fs = make_auditor(tmp_path)

    async def scenario() -> None:
        session = await make_session()
        auditor.client_frames(session, query("SELECT 1"))
        auditor.upstream_frames(session, answers())  # the timer starts
        auditor.client_frames(session, query("SELECT 2"))  # carries the outcome of 1
        auditor.upstream_frames(session, answers())  # 2's outcome waits: fresh
        writes = len(fs.record_writes)
        await wait_for(lambda: len(fs.record_writes) > writes)
        assert logged(tmp_path) == [
            ("query.batch", 1, []), ("query.batch", 2, [1]), ("query.done", None, [2]),
        ]  # fmt: skip

    run(scenario)
    log.close()


def test_session_end_writes_the_waiting_outcome_with_the_end_record(tmp_path: Path) -> None:
    auditor, log, fs = make_auditor(tmp_path)

    async def scenario() -> None:
        session = await make_session()
        auditor.client_frames(session, query("SELECT 1"))
        auditor.upstream_frames(session, answers())
        writes = len(fs.record_writes)
        auditor.session_ended(session, Ending(EndReason.CLIENT_LEFT))
        assert logged(tmp_path) == [
            ("query.batch", 1, []), ("query.done", None, [1]), ("session.ended", None, []),
        ]  # fmt: skip
        assert [kinds_of(w) for w in fs.record_writes[writes:]] == [["query.done", "session.ended"]]
        await asyncio.sleep(OUTCOME_DELAY * 2)
        assert len(fs.record_writes) == writes + 1

    run(scenario)
    log.close()
    (ended,) = [r for r in records(tmp_path / "audit.jsonl") if r["kind"] == "session.ended"]
    assert (ended["session_id"], ended["reason"], ended["queries"]) == ("s1", "client_left", 1)


def test_flush_writes_the_waiting_outcomes(tmp_path: Path) -> None:
    auditor, log, _ = make_auditor(tmp_path)

    async def scenario() -> None:
        session = await make_session()
        auditor.client_frames(session, query("SELECT 1"))
        auditor.upstream_frames(session, answers())
        auditor.flush()
        assert logged(tmp_path) == [("query.batch", 1, []), ("query.done", None, [1])]

    run(scenario)
    log.close()


def test_with_no_running_loop_the_outcome_is_written_at_once(tmp_path: Path) -> None:
    auditor, log, _ = make_auditor(tmp_path)
    session = asyncio.run(make_session())  # the loop is gone from here on
    auditor.client_frames(session, query("SELECT 1"))
    auditor.upstream_frames(session, answers())
    assert logged(tmp_path) == [("query.batch", 1, []), ("query.done", None, [1])]
    auditor.client_frames(session, query("SELECT 2"))
    assert logged(tmp_path)[-1] == ("query.batch", 2, [])
    log.close()


def test_outcomes_a_record_cannot_carry_are_written_at_once(tmp_path: Path) -> None:
    """A pipeline of MAX_DONE queries: their outcomes go out together, before any timer."""
    auditor, log, _ = make_auditor(tmp_path)

    async def scenario() -> None:
        session = await make_session()
        texts = [f"SELECT {n}" for n in range(MAX_DONE)]
        auditor.client_frames(session, frames(*map(Query, texts)))
        auditor.upstream_frames(session, answers() * MAX_DONE)
        (done,) = [r for r in records(tmp_path / "audit.jsonl") if r["kind"] == "query.done"]
        assert [outcome["n"] for outcome in done["done"]] == list(range(1, MAX_DONE + 1))

    run(scenario)
    log.close()
