"""A live session and its one exit.

A `Session` exists from the moment both sides are logged in until both connections are closed.
Whatever ends it — the client leaving, the database going away, a protocol violation, shutdown,
and (with enforcement) the grant's end, a revocation or an admin's kill — goes through
`Session.terminate(ending)`, which, once and in this order:

1. stops the relay, so nothing more is forwarded in either direction (a late COMMIT never
   reaches the database);
2. tells the client why with a FATAL ErrorResponse carrying a SQLSTATE, when the client-bound
   stream stands at a message boundary (no ReadyForQuery follows a FATAL);
3. cancels the running query upstream, if one is running, and ends the upstream backend with
   Terminate and a close;
4. closes the client connection;
5. releases the session's slot and cancel key and tells the listeners (audit, metrics).

This mirrors pgbouncer's `disconnect_client_sqlstate` and Teleport's `disconnectClient`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from proxy.session.peer import Peer
from proxy.session.relay import Relay, RelayStop
from proxy.wire import ErrorResponse, RemoteProtocolError, Terminate, sqlstate

log = logging.getLogger(__name__)


class EndReason(StrEnum):
    """Why a session ended (a label for audit and metrics: a small fixed set)."""

    CLIENT_LEFT = "client_left"
    UPSTREAM_LEFT = "upstream_left"
    PROTOCOL_VIOLATION = "protocol_violation"
    SHUTDOWN = "shutdown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    KILLED = "killed"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class Ending:
    """How a session ends: the reason, and what the client is told (`message`, if any)."""

    reason: EndReason
    message: str | None = None
    sqlstate: str = sqlstate.ADMIN_SHUTDOWN
    detail: str = ""  # for the log and the audit record, never sent


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """Who is connected to what, as whom: fixed at login."""

    session_id: str
    user: str
    target: str
    access_level: str
    grant_id: str
    upstream_role: str
    client_address: str
    client_tls: bool
    application_name: str
    started_at: datetime
    grant_ends_at: datetime


@dataclass(frozen=True, slots=True)
class UpstreamHandle:
    """What it takes to cancel a query on the upstream backend (a fresh connection + its key)."""

    cancel: Callable[[], object]  # schedules a CancelRequest to the upstream; best effort


EndListener = Callable[["Session", Ending], None]


@dataclass(eq=False)
class Session:
    """A logged-in client relayed to its upstream backend."""

    info: SessionInfo
    client: Peer
    upstream: Peer
    upstream_handle: UpstreamHandle
    cancel_process_id: int
    cancel_secret: bytes = field(repr=False)
    max_client_message: int
    end_listeners: list[EndListener] = field(default_factory=list)
    ending: Ending | None = None
    relay: Relay = field(init=False)
    _done: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.relay = Relay(
            self.client, self.upstream, self._relay_stopped,
            max_client_message=self.max_client_message,
        )  # fmt: skip

    @property
    def session_id(self) -> str:
        return self.info.session_id

    def start(self, client_pending: bytes = b"", upstream_pending: bytes = b"") -> None:
        self.relay.start(client_pending, upstream_pending)

    async def wait_ended(self) -> Ending:
        await self._done.wait()
        assert self.ending is not None
        return self.ending

    def cancel_running_query(self) -> None:
        """Forward a client's CancelRequest: cancel what the backend runs now, if anything."""
        if self.ending is None and self.relay.busy:
            self.upstream_handle.cancel()

    def terminate(self, ending: Ending) -> None:
        """The one exit (see the module docstring). Safe to call many times; the first wins."""
        if self.ending is not None:
            return
        self.ending = ending
        was_busy = self.relay.busy
        self.relay.stop()
        self._tell_client(ending)
        if was_busy and not self.upstream.is_closed:
            self.upstream_handle.cancel()
        self.upstream.write(Terminate().encode())
        self.upstream.close()
        self.client.close()
        log.info(
            "session %s ended: %s%s", self.session_id, ending.reason,
            f" ({ending.detail})" if ending.detail else "",
        )  # fmt: skip
        for listener in self.end_listeners:
            try:
                listener(self, ending)
            except Exception:
                log.exception("session %s: end listener failed", self.session_id)
        self._done.set()

    def _tell_client(self, ending: Ending) -> None:
        if ending.message is None or self.client.is_closed:
            return
        if not self.relay.client_stream_at_boundary:
            # Mid-message: an ErrorResponse now would corrupt the stream; the close says enough.
            return
        self.client.write(ErrorResponse.fatal(ending.sqlstate, ending.message).encode())

    def _relay_stopped(self, why: RelayStop, error: RemoteProtocolError | None) -> None:
        self.terminate(_ending_for(why, error, upstream_told_client=self.relay.upstream_sent_fatal))


def _ending_for(
    why: RelayStop, error: RemoteProtocolError | None, *, upstream_told_client: bool
) -> Ending:
    if why in (RelayStop.CLIENT_CLOSED, RelayStop.CLIENT_TERMINATED):
        return Ending(EndReason.CLIENT_LEFT, detail=why)
    if why is RelayStop.UPSTREAM_CLOSED and upstream_told_client:
        return Ending(EndReason.UPSTREAM_LEFT, detail=f"{why} after a FATAL error")
    if why is RelayStop.UPSTREAM_CLOSED:
        return Ending(
            EndReason.UPSTREAM_LEFT, "pgwarden: the database closed the connection",
            sqlstate.CONNECTION_FAILURE, detail=why,
        )  # fmt: skip
    if why is RelayStop.CLIENT_PROTOCOL_VIOLATION:
        message = error.message if error is not None else "protocol violation"
        return Ending(EndReason.PROTOCOL_VIOLATION, message, sqlstate.PROTOCOL_VIOLATION, why)
    return Ending(
        EndReason.PROTOCOL_VIOLATION, "pgwarden: the database sent an invalid message",
        sqlstate.PROTOCOL_VIOLATION, detail=f"{why}: {error}",
    )  # fmt: skip
