"""Cancel forwarding between replicas (proxy/cluster/peers.py), against a loopback listener that
stands in for the other replica: what it receives, when the forward returns, what is dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from proxy.cluster.peers import Peers, parse_address
from proxy.wire import CancelRequest
from tests.fixtures.clock import FakeClock

REQUEST = CancelRequest(4242, b"\x0c\x01\x02\x03")
TIMEOUT = 10.0  # seconds: a bound on every test, never an assertion


class OtherReplica:
    """A listener that records the bytes of each connection, then closes it when released."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.release = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.received.append(await reader.readexactly(16))
        await self.release.wait()
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def run(test: Callable[[OtherReplica], Awaitable[None]]) -> None:
    async def main() -> None:
        other = OtherReplica()
        try:
            await asyncio.wait_for(test(other), TIMEOUT)
        finally:
            other.close()

    asyncio.run(main())


def test_a_cancel_is_forwarded_as_sent_and_returns_once_the_other_replica_closes(
    clock: FakeClock,
) -> None:
    async def test(other: OtherReplica) -> None:
        peers = Peers(0, lambda: {2: address}, clock.monotonic)
        address = await other.start()
        forward = asyncio.create_task(peers.forward_cancel(2, REQUEST))
        for _ in range(100):
            if other.received:
                break
            await asyncio.sleep(0.01)
        assert other.received == [REQUEST.encode()]
        assert not forward.done()  # the client's connection stays open until the other closes
        other.release.set()
        await forward

    run(test)


def test_the_same_key_is_not_forwarded_twice_at_once(clock: FakeClock) -> None:
    async def test(other: OtherReplica) -> None:
        address = await other.start()
        peers = Peers(0, lambda: {1: address}, clock.monotonic)
        first = asyncio.create_task(peers.forward_cancel(1, REQUEST))
        await asyncio.sleep(0.05)
        await peers.forward_cancel(1, REQUEST)  # a loop back to us: dropped at once
        other.release.set()
        await first
        assert len(other.received) == 1
        await peers.forward_cancel(1, REQUEST)  # later, the same key again: forwarded
        assert len(other.received) == 2

    run(test)


def test_our_own_slot_and_a_slot_nobody_holds_are_not_forwarded(clock: FakeClock) -> None:
    async def test(other: OtherReplica) -> None:
        address = await other.start()
        other.release.set()
        peers = Peers(3, lambda: {3: address, 4: address}, clock.monotonic)
        await peers.forward_cancel(3, REQUEST)
        await peers.forward_cancel(9, REQUEST)
        assert other.received == []

    run(test)


def test_the_registry_is_read_at_most_once_a_second(clock: FakeClock) -> None:
    reads: list[int] = []

    def load() -> dict[int, str]:
        reads.append(1)
        return {}

    async def test(other: OtherReplica) -> None:
        peers = Peers(0, load, clock.monotonic)
        for _ in range(5):
            await peers.forward_cancel(7, REQUEST)  # a flood of forged slots
        assert len(reads) == 1
        clock.advance(1.0)
        await peers.forward_cancel(7, REQUEST)
        assert len(reads) == 2
        peers.update({})  # the heartbeat's fresh table: no read needed
        await peers.forward_cancel(7, REQUEST)
        assert len(reads) == 2

    run(test)


def test_an_unreachable_replica_costs_a_warning_not_a_hang(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def test(other: OtherReplica) -> None:
        address = await other.start()
        other.close()  # nobody listens there any more
        await asyncio.sleep(0)
        peers = Peers(0, lambda: {1: address}, clock.monotonic)
        await peers.forward_cancel(1, REQUEST)

    run(test)
    assert "could not forward a cancel" in caplog.text


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:6432", ("127.0.0.1", 6432)),
        ("[::1]:6432", ("::1", 6432)),
        ("db-proxy.internal:5432", ("db-proxy.internal", 5432)),
        ("127.0.0.1:0", None),
        ("127.0.0.1", None),
        (":6432", None),
        ("127.0.0.1:65536", None),
        ("x" * 400 + ":1", None),
    ],
)
def test_registry_addresses_parse_or_are_refused(text: str, parsed: tuple[str, int] | None) -> None:
    assert parse_address(text) == parsed
