"""Cancel forwarding: a CancelRequest for another replica's session goes to that replica.

A TCP load balancer spreads new connections over the replicas, so the CancelRequest for a
session on replica A may reach replica B. The cancel key names its replica (its slot, in the
secret's top bits: proxy/session/registry.py), as pgbouncer's peering puts the peer id in its
keys. B opens a connection to A's advertised proxy address (`state.advertise`, from the
registry, never from anything the client sent) and sends the same CancelRequest; A checks the
key as its own and cancels the query. B closes the client's connection once A has closed the
forwarded one, which A does once the database has taken the cancel: a client that waits for
the close before its next statement still never has that statement cancelled.

Bounds: one connection per request, `FORWARD_TIMEOUT` for all of it; a slot no live replica
holds is dropped; a replica never forwards a key of its own slot; a key already being
forwarded by this process is not forwarded again (a loop between replicas whose views of the
slots disagree for a moment ends at the first process it comes back to); at most
`MAX_FORWARDS` at once. The slot → address table is refreshed by the heartbeat
(proxy/cluster/sessions.py) in the primary, and read from the registry, at most once per
`REFRESH_INTERVAL`, in a worker process or when it is older than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from proxy.wire import CancelRequest

log = logging.getLogger(__name__)

CONNECT_TIMEOUT: Final = 2.0  # seconds to reach the other replica's proxy port
FORWARD_TIMEOUT: Final = 5.0  # seconds for the whole forward, until the other side closes
REFRESH_INTERVAL: Final = 1.0  # seconds: how old the table may get before it is read again
MAX_FORWARDS: Final = 256  # forwards in progress at once; more are dropped (a flood)
MAX_ADDRESS_CHARS: Final = 300  # a registry row longer than this is not an address

Load = Callable[[], dict[int, str]]  # blocking: slot -> "host:port" of the live replicas


class Peers:
    """The other replicas' proxy addresses by slot, and forwarding to them."""

    def __init__(self, own_slot: int, load: Load, monotonic: Callable[[], float]) -> None:
        self.own_slot = own_slot
        self._load = load
        self._monotonic = monotonic
        self._table: dict[int, str] = {}
        self._read_at: float | None = None  # when the table was last known right
        self._tried_at: float | None = None  # when a read was last started here
        self._in_flight: set[tuple[int, bytes]] = set()

    def update(self, table: dict[int, str]) -> None:
        """A fresh table (the heartbeat's read)."""
        self._table = {slot: a for slot, a in table.items() if slot != self.own_slot}
        self._read_at = self._monotonic()

    async def forward_cancel(self, slot: int, request: CancelRequest) -> None:
        """Pass `request` on to the replica of `slot`, and wait until it has handled it."""
        key = (request.process_id, request.secret_key)
        if slot == self.own_slot or key in self._in_flight:
            return
        if len(self._in_flight) >= MAX_FORWARDS:
            log.warning("cancel for replica slot %d dropped: %d forwards in progress",
                        slot, MAX_FORWARDS)  # fmt: skip
            return
        self._in_flight.add(key)
        try:
            address = await self._address(slot)
            if address is None:
                log.debug("cancel for replica slot %d dropped: no live replica holds it", slot)
                return
            await _send(address, request)
        finally:
            self._in_flight.discard(key)

    async def _address(self, slot: int) -> tuple[str, int] | None:
        now = self._monotonic()
        stale = self._read_at is None or now - self._read_at >= REFRESH_INTERVAL
        if stale and (self._tried_at is None or now - self._tried_at >= REFRESH_INTERVAL):
            self._tried_at = now  # one read per interval, however many cancels arrive
            try:
                self.update(await asyncio.get_running_loop().run_in_executor(None, self._load))
            except Exception as exc:  # the registry is away: the last table it gave stands
                log.warning("could not read the replicas' addresses: %s", exc)
        text = self._table.get(slot)
        return None if text is None else parse_address(text)

    def __len__(self) -> int:
        return len(self._table)


async def _send(address: tuple[str, int], request: CancelRequest) -> None:
    host, port = address
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(FORWARD_TIMEOUT):
            connecting = asyncio.open_connection(host, port)
            reader, opened = await asyncio.wait_for(connecting, CONNECT_TIMEOUT)
            writer = opened
            opened.write(request.encode())
            await opened.drain()
            await reader.read(1)  # EOF: the other replica has passed the cancel on
    except (OSError, TimeoutError) as exc:
        log.warning("could not forward a cancel to the replica at %s:%d: %s", host, port,
                    exc or type(exc).__name__)  # fmt: skip
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), CONNECT_TIMEOUT)


def parse_address(text: str) -> tuple[str, int] | None:
    """("host", port) of a registry address (`host:port`, `[v6]:port`), or None if malformed."""
    if len(text) > MAX_ADDRESS_CHARS:
        return None
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)
