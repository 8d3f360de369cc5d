"""Session.terminate, the one exit, over real loopback sockets with scripted peers.

A "client" and an "upstream" are plain asyncio servers on 127.0.0.1; the session's two Peers
connect to them. The tests read what each side received and when it was closed.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from proxy.net.peer import Peer
from proxy.session.session import (
    Ending,
    EndReason,
    Session,
    SessionInfo,
    UpstreamHandle,
)
from proxy.wire import DataRow, ErrorResponse, Query, ReadyForQuery, Terminate, TransactionStatus

TEST_TIMEOUT = 10.0
EXIT_GRACE = 0.05  # the session's upstream_exit_grace here (production: UPSTREAM_EXIT_GRACE)
FATAL_TEXT = 'pgwarden: access to "orders" (read-only) expired at 10:00:00 UTC'


@dataclass
class Far:
    """The far end of one socket: what it received, and whether it closed."""

    received: bytearray = field(default_factory=bytearray)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.StreamWriter | None = None
    close_on_terminate: bool = True

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        while data := await reader.read(65536):
            self.received += data
            if self.close_on_terminate and data.endswith(b"X\x00\x00\x00\x04"):
                writer.close()
                break
        self.closed.set()


async def connect_to(far: Far) -> tuple[Peer, asyncio.Server]:
    server = await asyncio.start_server(far.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, peer = await asyncio.get_running_loop().create_connection(
        lambda: Peer("test"), "127.0.0.1", port
    )
    while far.writer is None:
        await asyncio.sleep(0.001)
    return peer, server


@dataclass
class Harness:
    session: Session
    client: Far
    upstream: Far
    reaped: list[int]
    cancels: list[int]


def info() -> SessionInfo:
    now = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
    return SessionInfo(
        session_id="s1", user="alice", target="orders", access_level="read-only", grant_id="g1",
        upstream_role="ro", client_address="127.0.0.1", client_tls=False, application_name="",
        started_at=now, grant_ends_at=now + timedelta(hours=1), backend_process_id=4242,
    )  # fmt: skip


@asynccontextmanager
async def harness(*, upstream_exits: bool = True) -> AsyncIterator[Harness]:
    client_far, upstream_far = Far(), Far(close_on_terminate=upstream_exits)
    client, client_server = await connect_to(client_far)
    upstream, upstream_server = await connect_to(upstream_far)
    reaped: list[int] = []
    cancels: list[int] = []

    async def reap() -> bool:
        reaped.append(4242)
        return True

    session = Session(
        info=info(), client=client, upstream=upstream,
        upstream_handle=UpstreamHandle(cancel=lambda: cancels.append(1), terminate_backend=reap),
        cancel_process_id=7, cancel_secret=b"abcd", max_client_message=1 << 20,
        monotonic=lambda: 0.0, deadline=3600.0, started=0.0, upstream_exit_grace=EXIT_GRACE,
    )  # fmt: skip
    session.start()
    try:
        yield Harness(session, client_far, upstream_far, reaped, cancels)
    finally:
        for far in (client_far, upstream_far):
            if far.writer is not None:
                far.writer.close()
        for server in (client_server, upstream_server):
            server.close()
            await server.wait_closed()


def run(test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            await test()

    asyncio.run(bounded())


def expiry() -> Ending:
    return Ending(EndReason.EXPIRED, FATAL_TEXT)


def fatal_bytes() -> bytes:
    return ErrorResponse.fatal("57P01", FATAL_TEXT).encode()


def test_an_idle_session_gets_its_fatal_and_the_backend_a_terminate() -> None:
    async def main() -> None:
        async with harness() as h:
            h.session.terminate(expiry())
            assert await h.session.wait_ended() == expiry()
            await h.client.closed.wait()
            assert bytes(h.client.received) == fatal_bytes()
            assert bytes(h.upstream.received).endswith(b"X\x00\x00\x00\x04")
            assert h.reaped == []
            assert h.cancels == []

    run(main)


def test_a_busy_session_cancels_the_running_query() -> None:
    async def main() -> None:
        async with harness() as h:
            assert h.upstream.writer is not None
            h.session.relay._from_client(Query("SELECT 1").encode())  # now busy
            h.session.terminate(expiry())
            await h.session.wait_ended()
            assert h.cancels == [1]

    run(main)


def test_a_backend_that_ignores_terminate_is_reaped_after_the_grace() -> None:
    async def main() -> None:
        async with harness(upstream_exits=False) as h:
            loop = asyncio.get_running_loop()
            started = loop.time()
            h.session.terminate(expiry())
            await h.session.wait_ended()
            assert h.reaped == [4242]
            assert loop.time() - started >= EXIT_GRACE * 0.9

    run(main)


def test_a_client_that_left_does_not_get_its_backend_reaped() -> None:
    async def main() -> None:
        async with harness(upstream_exits=False) as h:
            h.session.terminate(Ending(EndReason.CLIENT_LEFT))
            await h.session.wait_ended()
            assert h.reaped == []  # only endings that enforce access call the control role

    run(main)


def test_mid_message_the_fatal_waits_for_the_end_of_the_message() -> None:
    async def main() -> None:
        async with harness() as h:
            row = DataRow((b"x" * 1000,)).encode()
            h.session.relay._from_upstream(row[:100])  # half a DataRow went to the client
            h.session.terminate(expiry())
            await asyncio.sleep(0.05)
            assert fatal_bytes() not in bytes(h.client.received)
            assert h.upstream.writer is not None
            h.session.relay._from_upstream(row[100:] + row)  # the rest, and another row
            await h.session.wait_ended()
            await h.client.closed.wait()
            assert bytes(h.client.received) == row + fatal_bytes()  # exactly one whole row first

    run(main)


def test_terminate_twice_ends_once() -> None:
    async def main() -> None:
        async with harness() as h:
            h.session.terminate(expiry())
            h.session.terminate(Ending(EndReason.KILLED, "other"))
            assert await h.session.wait_ended() == expiry()
            await h.client.closed.wait()
            assert bytes(h.client.received).count(b"57P01") == 1

    run(main)


def test_the_ready_for_query_status_tracking_clears_busy() -> None:
    async def main() -> None:
        async with harness() as h:
            h.session.relay._from_client(Query("SELECT 1").encode())
            assert h.session.relay.busy
            h.session.relay._from_upstream(ReadyForQuery(TransactionStatus.IDLE).encode())
            assert not h.session.relay.busy
            h.session.terminate(expiry())
            await h.session.wait_ended()

    run(main)


@pytest.mark.parametrize("length", [3, 0x7FFFFFFF])
def test_a_client_message_with_a_bad_length_ends_the_session_with_08p01(length: int) -> None:
    async def main() -> None:
        async with harness() as h:
            h.session.relay._from_client(b"Q" + struct.pack("!I", length))
            ending = await h.session.wait_ended()
            assert ending.reason is EndReason.PROTOCOL_VIOLATION
            assert ending.sqlstate == "08P01"
            await h.upstream.closed.wait()
            assert bytes(h.upstream.received) == Terminate().encode()  # nothing of it forwarded

    run(main)
