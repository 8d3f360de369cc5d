"""The Postgres-facing listener and its lifecycle: start, serve, shut down with a grace period.

Each accepted connection takes a pre-auth slot (global and per source address); then one task
runs it (`handshake.serve_connection`) until it closes. A connection over a cap is refused as
Postgres refuses one: its task answers the SSLRequest, reads the startup packet and sends FATAL
53300 with the cap and its value; past the (small) cap on refusals in progress it is closed at
once without a byte. Either way the refusal is counted and logged, rate-limited. Shutdown
stops accepting, ends every live session through its one exit with FATAL 57P01 "pgwarden is shutting
down", cancels logins in progress (they get the same message), and gives everything `grace`
seconds to finish before the remaining connections are aborted.
"""

from __future__ import annotations

import asyncio
import logging

from proxy import native
from proxy.net.peer import Peer
from proxy.session import refusals
from proxy.session.admission import Stage
from proxy.session.context import ProxyContext
from proxy.session.handshake import serve_connection
from proxy.session.session import Ending, EndReason
from proxy.wire import ErrorResponse, sqlstate

log = logging.getLogger(__name__)

# Pending connections the kernel may queue while the loop is busy; bursts of -C logins need room.
LISTEN_BACKLOG = 1024
SHUTDOWN_MESSAGE = "pgwarden is shutting down"


class ClientPeer(Peer):
    """A client connection; tells the server as soon as it is accepted."""

    def __init__(self, server: ProxyServer) -> None:
        super().__init__("client")
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._server.accepted(self)


class ProxyServer:
    """Listens for Postgres clients and runs a task per connection."""

    def __init__(
        self, ctx: ProxyContext, host: str, port: int, *, reuse_port: bool = False
    ) -> None:
        self.ctx = ctx
        self._host, self._port = host, port
        self._reuse_port = reuse_port  # several worker processes accept on one port
        self._listener: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            lambda: ClientPeer(self), self._host, self._port, backlog=LISTEN_BACKLOG,
            reuse_port=self._reuse_port or None,
        )  # fmt: skip
        log.info(
            "pgwarden listening for Postgres clients on %s:%d; hot path %s",
            self._host, self.port, native.describe(),
        )  # fmt: skip

    @property
    def port(self) -> int:
        """The port actually bound (the configured one, or the one the OS chose for port 0)."""
        assert self._listener is not None
        return int(self._listener.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections being served now (logging in or relaying)."""
        return len(self._tasks)

    def accepted(self, peer: Peer) -> None:
        source = _source_address(peer)
        if self._closing:
            peer.write(ErrorResponse.fatal(sqlstate.ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE).encode())
            peer.close()
            return
        admission = self.ctx.admission
        refusal = admission.admit(Stage.PREAUTH, source)
        if refusal is not None:
            told = admission.admit(Stage.REFUSING, source) is None
            refusals.report(self.ctx, source, refusal, told=told)
            if not told:
                peer.abort()  # a flood past every cap: it costs us nothing more
                return
        coroutine = serve_connection(peer, source, self.ctx, refusal)
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("connection task failed", exc_info=exc)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, end every session with 57P01, wait up to `grace` s, abort the rest."""
        self._closing = True
        if self._listener is not None:
            self._listener.close()
        sessions = list(self.ctx.registry)
        ending = Ending(EndReason.SHUTDOWN, SHUTDOWN_MESSAGE, sqlstate.ADMIN_SHUTDOWN)
        for session in sessions:
            session.terminate(ending)
        for task in list(self._tasks):
            task.cancel()  # logins in progress answer 57P01 as they unwind
        peers = [peer for session in sessions for peer in (session.client, session.upstream)]
        closing = [asyncio.ensure_future(peer.wait_closed()) for peer in peers]
        # Closed sockets are not enough: each session's exit must also have been announced (the
        # audit record written) before the caller closes the audit log.
        ended = [asyncio.ensure_future(session.wait_ended()) for session in sessions]
        waiting = [*self._tasks, *closing, *ended]
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=grace)
            for future in pending:
                future.cancel()
        for peer in peers:
            if not peer.is_closed:
                peer.abort()  # the grace period is over: whatever is unsent is dropped
        log.info("pgwarden stopped (%d sessions ended)", len(sessions))


def _source_address(peer: Peer) -> str:
    """The client's IP address (no port): the key of per-source limits and throttles."""
    transport = peer.transport
    peername = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return "unix" if peername is not None else "unknown"
