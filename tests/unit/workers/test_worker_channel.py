"""The JSON-lines channel between the primary and a worker (`WorkerChannel`), over a real
socketpair inside one event loop: notices, calls, answers, errors, bounds and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from proxy.workers import channel as channel_module
from proxy.workers.channel import ChannelClosed, Message, WorkerChannel, channel_pair
from tests.fixtures.workers import (
    WAIT,
    ignore,
    run,
)

Handler = Callable[[str, Message], Awaitable[Message | None]]

# --- the channel ----------------------------------------------------------------------------


@dataclass
class Pair:
    near: WorkerChannel
    far: WorkerChannel
    near_running: asyncio.Task[None]
    far_running: asyncio.Task[None]


@asynccontextmanager
async def channels(
    near_handler: Handler = ignore, far_handler: Handler = ignore
) -> AsyncIterator[Pair]:
    """Two WorkerChannels over a real socketpair, each running; both closed at the end."""
    near_end, far_end = channel_pair()
    near = await WorkerChannel.open(near_end, near_handler)
    far = await WorkerChannel.open(far_end, far_handler)
    pair = Pair(near, far, asyncio.create_task(near.run()), asyncio.create_task(far.run()))
    try:
        yield pair
    finally:
        near.close()
        far.close()
        await asyncio.wait_for(
            asyncio.gather(pair.near_running, pair.far_running, return_exceptions=True), WAIT
        )


@dataclass
class Raw:
    """The far end as plain bytes, to send what a WorkerChannel never would."""

    near: WorkerChannel
    near_running: asyncio.Task[None]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


@asynccontextmanager
async def raw_far_end(near_handler: Handler = ignore) -> AsyncIterator[Raw]:
    near_end, far_end = channel_pair()
    near = await WorkerChannel.open(near_end, near_handler)
    reader, writer = await asyncio.open_unix_connection(sock=far_end)
    raw = Raw(near, asyncio.create_task(near.run()), reader, writer)
    try:
        yield raw
    finally:
        near.close()
        writer.close()
        await asyncio.wait_for(asyncio.gather(raw.near_running, return_exceptions=True), WAIT)
        with contextlib.suppress(ConnectionError):  # the near end may have reset it
            await asyncio.wait_for(writer.wait_closed(), WAIT)


async def far_end_sees_the_close(raw: Raw) -> None:
    """The far end reads EOF (or a reset, if the near end closed with bytes unread)."""
    try:
        rest = await asyncio.wait_for(raw.reader.read(), WAIT)
    except ConnectionResetError:
        return
    assert rest == b""


class Recorder:
    """A handler that keeps what it was sent and can wait for the n-th message."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Message]] = []
        self._arrived = asyncio.Condition()

    async def __call__(self, op: str, message: Message) -> Message | None:
        async with self._arrived:
            self.seen.append((op, message))
            self._arrived.notify_all()
        return None

    async def wait_for(self, count: int) -> None:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.seen) >= count), WAIT)


def test_notices_arrive_in_the_order_they_were_sent() -> None:
    async def test() -> None:
        recorder = Recorder()
        async with channels(far_handler=recorder) as pair:
            for seq in range(200):
                pair.near.notify("tick", seq=seq)
            await recorder.wait_for(200)
        assert [m["seq"] for _, m in recorder.seen] == list(range(200))
        assert {op for op, _ in recorder.seen} == {"tick"}

    run(test)


def test_a_notice_is_handled_to_the_end_before_the_next_one_starts() -> None:
    async def test() -> None:
        trace: list[str] = []
        done = asyncio.Event()

        async def handler(op: str, message: Message) -> Message | None:
            trace.append(f"start {message['seq']}")
            await asyncio.sleep(0)  # give a second notice every chance to overtake this one
            await asyncio.sleep(0)
            trace.append(f"end {message['seq']}")
            if message["seq"] == 2:
                done.set()
            return None

        async with channels(far_handler=handler) as pair:
            for seq in range(3):
                pair.near.notify("tick", seq=seq)
            await asyncio.wait_for(done.wait(), WAIT)
        assert trace == ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]

    run(test)


def test_a_call_returns_what_the_other_end_answers() -> None:
    async def test() -> None:
        async def handler(op: str, message: Message) -> Message | None:
            return {"op": op, "twice": 2 * int(str(message["n"]))}

        async with channels(far_handler=handler) as pair:
            assert await pair.near.call("double", n=21) == {"op": "double", "twice": 42}
            assert await pair.near.call("double", n=1) == {"op": "double", "twice": 2}

    run(test)


def test_a_call_answered_with_nothing_gets_an_empty_result() -> None:
    async def test() -> None:
        async with channels() as pair:
            assert await pair.near.call("anything") == {}

    run(test)


def test_calls_run_concurrently_at_the_other_end() -> None:
    async def test() -> None:
        gate = asyncio.Event()

        async def handler(op: str, message: Message) -> Message | None:
            if op == "slow":
                await gate.wait()
            return {"op": op}

        async with channels(far_handler=handler) as pair:
            slow = asyncio.create_task(pair.near.call("slow"))
            assert await pair.near.call("fast") == {"op": "fast"}
            assert not slow.done()
            gate.set()
            assert await asyncio.wait_for(slow, WAIT) == {"op": "slow"}

    run(test)


def test_a_failing_handler_fails_that_call_only(caplog: pytest.LogCaptureFixture) -> None:
    async def test() -> None:
        async def handler(op: str, message: Message) -> Message | None:
            if op == "bad":
                raise KeyError("no such session")
            return {"fine": True}

        async with channels(far_handler=handler) as pair:
            with pytest.raises(ChannelClosed, match="KeyError: 'no such session'"):
                await pair.near.call("bad")
            assert await pair.near.call("good") == {"fine": True}
            assert not pair.near.closed
            assert not pair.far.closed

    with caplog.at_level(logging.ERROR, logger="proxy.workers.channel"):
        run(test)
    assert "channel call 'bad' failed" in caplog.text


def test_a_call_on_a_closed_channel_fails_at_once() -> None:
    async def test() -> None:
        async with channels() as pair:
            pair.near.close()
            with pytest.raises(ChannelClosed, match="closed before 'sessions'"):
                await pair.near.call("sessions")

    run(test)


def test_a_notice_on_a_closed_channel_is_dropped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        async with channels() as pair:
            pair.near.close()
            pair.near.notify("secret", password="x")  # must not raise

    with caplog.at_level(logging.WARNING, logger="proxy.workers.channel"):
        run(test)
    assert "dropped 'secret'" in caplog.text


def test_a_pending_call_fails_when_the_other_end_closes() -> None:
    async def test() -> None:
        started = asyncio.Event()

        async def never(op: str, message: Message) -> Message | None:
            started.set()
            await asyncio.Event().wait()
            return None

        async with channels(far_handler=never) as pair:
            pending = asyncio.create_task(pair.near.call("end", timeout=60.0))
            await asyncio.wait_for(started.wait(), WAIT)
            pair.far.close()
            with pytest.raises(ChannelClosed, match="worker channel closed"):
                await asyncio.wait_for(pending, WAIT)  # long before its own 60 s
            await asyncio.wait_for(pair.near_running, WAIT)
            assert pair.near.closed

    run(test)


def test_a_call_nobody_answers_times_out_and_a_late_answer_is_ignored() -> None:
    async def test() -> None:
        gate = asyncio.Event()
        answered = asyncio.Event()

        async def late(op: str, message: Message) -> Message | None:
            if op == "slow":
                await gate.wait()
                answered.set()
            return {"op": op}

        async with channels(far_handler=late) as pair:
            with pytest.raises(ChannelClosed, match="no answer to 'slow'"):
                await pair.near.call("slow", timeout=0.05)
            gate.set()
            await asyncio.wait_for(answered.wait(), WAIT)
            # The late answer reaches a channel that no longer waits for it: no harm done.
            assert await pair.near.call("next") == {"op": "next"}
            assert not pair.near.closed

    run(test)


def _padded_line(length: int) -> bytes:
    """A valid notice of exactly `length` bytes, newline excluded."""
    head, tail = b'{"op":"pad","x":"', b'"}'
    return head + b"a" * (length - len(head) - len(tail)) + tail + b"\n"


def test_a_line_of_max_line_bytes_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel_module, "MAX_LINE", 1024)

    async def test() -> None:
        recorder = Recorder()
        async with raw_far_end(recorder) as raw:
            raw.writer.write(_padded_line(1024))
            await recorder.wait_for(1)
            assert not raw.near.closed
        assert recorder.seen[0][0] == "pad"

    run(test)


@pytest.mark.parametrize("length", [1025, 64 * 1024])
def test_a_line_longer_than_max_line_closes_the_channel(
    length: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(channel_module, "MAX_LINE", 1024)

    async def test() -> None:
        recorder = Recorder()
        async with raw_far_end(recorder) as raw:
            raw.writer.write(_padded_line(length) + _padded_line(100))
            await asyncio.wait_for(raw.near_running, WAIT)  # run() returns: it does not raise
            assert raw.near.closed
            await far_end_sees_the_close(raw)
        assert recorder.seen == []

    with caplog.at_level(logging.ERROR, logger="proxy.workers.channel"):
        run(test)
    assert "closing it" in caplog.text


@pytest.mark.parametrize(
    "line",
    [
        b"[1, 2]\n",
        b'"text"\n',
        b"42\n",
        b"null\n",
        b"not json\n",
        b'{"no_op": 1}\n',
        b'{"op": 7}\n',
        b"\xff\xfe\n",
    ],
    ids=["list", "string", "number", "null", "garbage", "no-op", "op-not-text", "not-utf8"],
)
def test_a_line_that_is_not_a_message_closes_the_channel(
    line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def test() -> None:
        recorder = Recorder()
        async with raw_far_end(recorder) as raw:
            raw.writer.write(line + b'{"op":"after"}\n')
            await asyncio.wait_for(raw.near_running, WAIT)  # run() returns: it does not raise
            assert raw.near.closed
            await far_end_sees_the_close(raw)
        assert recorder.seen == []  # nothing after the bad line is acted on

    with caplog.at_level(logging.ERROR, logger="proxy.workers.channel"):
        run(test)
    assert "closing it" in caplog.text


def test_a_deeply_nested_line_closes_the_channel_without_crashing_its_reader() -> None:
    # A line well under MAX_LINE that nests JSON deeply makes json.loads raise RecursionError:
    # run() must log and close, not raise (PrimaryLink relies on it to stop the worker).
    async def test() -> None:
        async with raw_far_end() as raw:
            raw.writer.write(b"[" * 100_000 + b"]" * 100_000 + b"\n")
            (raised,) = await asyncio.wait_for(
                asyncio.gather(raw.near_running, return_exceptions=True), WAIT
            )
            assert raw.near.closed
        assert raised is None, f"run() raised {raised!r} instead of closing the channel"

    run(test)


def test_an_answer_to_an_unknown_call_is_ignored() -> None:
    async def test() -> None:
        async with raw_far_end() as raw:
            raw.writer.write(b'{"reply":999,"result":{}}\n{"reply":998,"error":"late"}\n')
            # A call after them is answered by hand, which proves both lines were read past.
            calling = asyncio.create_task(raw.near.call("ping"))
            request = json.loads(await asyncio.wait_for(raw.reader.readline(), WAIT))
            assert request == {"op": "ping", "id": 1}
            raw.writer.write(b'{"reply":1,"result":{"pong":true}}\n')
            assert await asyncio.wait_for(calling, WAIT) == {"pong": True}
            assert not raw.near.closed

    run(test)


def test_an_answer_without_a_result_fails_the_call() -> None:
    async def test() -> None:
        async with raw_far_end() as raw:
            calling = asyncio.create_task(raw.near.call("ping"))
            request = json.loads(await asyncio.wait_for(raw.reader.readline(), WAIT))
            raw.writer.write(json.dumps({"reply": request["id"], "result": [1]}).encode() + b"\n")
            with pytest.raises(ChannelClosed, match="without a result"):
                await asyncio.wait_for(calling, WAIT)

    run(test)


def test_a_line_too_long_to_send_is_dropped_and_the_channel_lives_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(channel_module, "MAX_LINE", 1024)

    async def test() -> None:
        async with raw_far_end() as raw:
            with caplog.at_level(logging.ERROR, logger="proxy.workers.channel"):
                raw.near.notify("metrics", text="x" * 2048)  # the far end would drop the channel
            raw.near.notify("tick", seq=1)
            line = await asyncio.wait_for(raw.reader.readline(), WAIT)
            assert json.loads(line) == {"op": "tick", "seq": 1}
            assert not raw.near.closed
        assert "over 1024; dropped" in caplog.text

    run(test)


def test_a_peer_that_reads_nothing_is_given_up_for_dead(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(channel_module, "MAX_BUFFERED", 64 * 1024)

    async def test() -> None:
        async with raw_far_end() as raw:  # the far end never reads
            with caplog.at_level(logging.ERROR, logger="proxy.workers.channel"):
                for _ in range(1000):  # 32 MB offered: far past the kernel's buffers and ours
                    raw.near.notify("metrics", text="x" * 32_000)
                    if raw.near.closed:
                        break
                    await asyncio.sleep(0)
            assert raw.near.closed
        assert "reads nothing; closing it" in caplog.text

    run(test)
