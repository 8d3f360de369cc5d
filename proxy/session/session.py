"""A live session and its one exit.

A `Session` exists from the moment both sides are logged in until both connections are closed.
Whatever ends it — the client leaving, the database going away, a protocol violation, shutdown,
the grant's end, a revocation, an admin's kill — goes through `Session.terminate(ending)`, which,
once and in this order:

1. stops forwarding the client's data at once (a COMMIT that arrives late never reaches the
   database), and cancels the running query upstream if one is running;
2. tells the client why: a FATAL ErrorResponse with a SQLSTATE, injected at a message boundary —
   if a result is streaming, the message in progress is completed first (bounded); no
   ReadyForQuery follows a FATAL — then closes the client connection;
3. ends the upstream backend: Terminate, then waits for the backend to close its side; one that
   does not within `UPSTREAM_EXIT_GRACE` is aborted and, for endings that enforce access,
   terminated with `pg_terminate_backend` over the control connection. (With the upstream pool
   on, a backend the client left idle with its own Terminate is offered to the pool instead.)
4. tells the listeners (slot release, audit, metrics).

This mirrors pgbouncer's `disconnect_client_sqlstate` and Teleport's `disconnectClient`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from proxy.errors import PgwardenError
from proxy.net.peer import Peer
from proxy.session.observer import SessionObserver
from proxy.session.relay import Relay, RelayStop
from proxy.wire import ErrorResponse, Frame, NoticeResponse, Terminate, sqlstate

log = logging.getLogger(__name__)

# How long the client-bound stream may take to reach a message boundary before the FATAL.
DRAIN_TIMEOUT = 0.5
# How long a backend gets to exit after Terminate before it is aborted (and reaped).
UPSTREAM_EXIT_GRACE = 1.0


class EndReason(StrEnum):
    """Why a session ended (a label for audit and metrics: a small fixed set)."""

    CLIENT_LEFT = "client_left"
    UPSTREAM_LEFT = "upstream_left"
    PROTOCOL_VIOLATION = "protocol_violation"
    SHUTDOWN = "shutdown"
    EXPIRED = "expired"
    REVOKED = "revoked"
    REMOVED = "removed_from_policy"
    KILLED = "killed"
    REFUSED = "refused"  # pgwarden could not do what it must (the audit log failed): fail closed
    INTERNAL_ERROR = "internal_error"

    @property
    def enforces_access(self) -> bool:
        """Endings where a backend left running would be access beyond the grant."""
        return self in (EndReason.EXPIRED, EndReason.REVOKED, EndReason.REMOVED, EndReason.KILLED)


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
    backend_process_id: int


@dataclass(frozen=True, slots=True)
class UpstreamHandle:
    """Out-of-band actions on the upstream backend (each on a fresh connection)."""

    # Sends a CancelRequest in the background (best effort); the future completes once the
    # database has taken it (closed the cancel connection), or it gave up.
    cancel: Callable[[], asyncio.Future[bool]]
    terminate_backend: Callable[[], Awaitable[bool]]  # pg_terminate_backend over the control role
    # Offers the idle backend of a cleanly ended session to the pool: True if kept (pool.py).
    give_back: Callable[[], Awaitable[bool]] | None = None


EndListener = Callable[["Session", Ending], None]


@dataclass(eq=False)
class Session:
    """A logged-in client relayed to its upstream backend, until `deadline` (monotonic)."""

    info: SessionInfo
    client: Peer
    upstream: Peer
    upstream_handle: UpstreamHandle
    cancel_process_id: int
    cancel_secret: bytes = field(repr=False)
    max_client_message: int
    monotonic: Callable[[], float]
    deadline: float  # on the `monotonic` clock: wall-clock jumps after login do not move it
    started: float  # on the `monotonic` clock
    end_listeners: list[EndListener] = field(default_factory=list)
    observers: Sequence[SessionObserver] = ()
    upstream_exit_grace: float = UPSTREAM_EXIT_GRACE  # seconds; tests pass a shorter one
    ending: Ending | None = None
    end_requested_at: float = 0.0  # on the `monotonic` clock, when terminate() was first called
    warnings_sent: set[float] = field(default_factory=set)  # offsets (s) already announced
    reported_long: bool = False
    cancel_sent: bool = False  # a CancelRequest went upstream: the backend is never reused
    relay: Relay = field(init=False)
    _readers: list[SessionObserver] = field(init=False, default_factory=list)  # client messages
    _listeners: list[SessionObserver] = field(init=False, default_factory=list)  # upstream
    _done: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    # The exit task is held here: asyncio keeps only weak references to running tasks.
    _finishing: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._readers = [o for o in self.observers if o.CLIENT_MESSAGES]
        self._listeners = [o for o in self.observers if o.UPSTREAM_MESSAGES]
        self.relay = Relay(
            self.client, self.upstream, self._relay_stopped,
            max_client_message=self.max_client_message,
            deadline_passed=lambda: self.monotonic() >= self.deadline,
            client_observed={t for o in self._readers for t in o.CLIENT_MESSAGES},
            upstream_observed={t for o in self._listeners for t in o.UPSTREAM_MESSAGES},
            on_client_frames=self._client_frames if self._readers else None,
            on_upstream_frames=self._upstream_frames if self._listeners else None,
        )  # fmt: skip

    def _client_frames(self, frames: list[Frame]) -> Future[None] | None:
        # A PgwardenError here refuses the frames: the relay stops. A future: hold them until
        # the last one pending completes.
        wait = None
        for observer in self._readers:
            future = observer.client_frames(self, frames)
            if future is not None and not future.done():
                wait = future
        return wait

    def _upstream_frames(self, frames: list[Frame]) -> None:
        for observer in self._listeners:
            try:
                observer.upstream_frames(self, frames)
            except Exception:
                log.exception("session %s: observer failed", self.session_id)

    @property
    def session_id(self) -> str:
        return self.info.session_id

    def start(self, client_pending: bytes = b"", upstream_pending: bytes = b"") -> None:
        self.relay.start(client_pending, upstream_pending)

    async def wait_ended(self) -> Ending:
        await self._done.wait()
        assert self.ending is not None
        return self.ending

    def cancel_running_query(self) -> asyncio.Future[bool] | None:
        """Forward a client's CancelRequest, as the database would take it: whatever the backend
        runs now is cancelled (nothing, if it is idle). Not only while the relay counts a query
        as running: a client streaming Bind/Execute before its Sync has work running too. The
        future completes once the database has the cancel (see `forward_cancel`)."""
        if self.ending is not None:
            return None
        self.cancel_sent = True  # the pool never reuses a backend a cancel may still reach
        return self.upstream_handle.cancel()

    def notify(self, message: str) -> bool:
        """Send the client a NoticeResponse now, if the stream stands at a message boundary."""
        if self.ending is not None or not self.relay.client_stream_at_boundary:
            return False
        self.client.write(NoticeResponse.warning(sqlstate.WARNING, message).encode())
        return True

    def terminate(self, ending: Ending) -> None:
        """The one exit (see the module docstring). Safe to call many times; the first wins."""
        if self.ending is not None:
            return
        self.ending = ending
        self.end_requested_at = self.monotonic()
        if self.relay.busy and not self.upstream.is_closed:
            self.cancel_sent = True
            self.upstream_handle.cancel()
        drained = self.relay.drain_to_boundary()
        self._finishing = asyncio.get_running_loop().create_task(self._finish(ending, drained))

    async def _finish(self, ending: Ending, drained: asyncio.Future[bool]) -> None:
        kept = False  # by the pool: then the backend is no longer this session's to close
        try:
            await self._tell_client(ending, drained)
            kept = await self._end_upstream(ending)
        finally:
            self.relay.stop()
            self.client.close_after_reading()
            if not kept:
                self.upstream.abort()
            self._announce(ending)

    async def _tell_client(self, ending: Ending, drained: asyncio.Future[bool]) -> None:
        if ending.message is not None and not self.client.is_closed:
            try:
                at_boundary = await asyncio.wait_for(asyncio.shield(drained), DRAIN_TIMEOUT)
            except TimeoutError:
                at_boundary = False
            self.relay.stop()
            if at_boundary:
                self.client.write(ErrorResponse.fatal(ending.sqlstate, ending.message).encode())
            # Mid-message, an ErrorResponse would corrupt the stream: the close says enough.
        self.relay.stop()
        self.client.close_after_reading()

    async def _end_upstream(self, ending: Ending) -> bool:
        """End the backend, or give it to the pool: True if the pool kept it."""
        if self.upstream.is_closed:
            return False
        if await self._give_back(ending):
            return True
        self.upstream.write(Terminate().encode())
        try:
            await asyncio.wait_for(self.upstream.wait_closed(), self.upstream_exit_grace)
            return False
        except TimeoutError:
            self.upstream.abort()
        if ending.reason.enforces_access:
            await self.upstream_handle.terminate_backend()
        else:
            log.warning(
                "session %s: backend %d did not exit within %.1f s of Terminate",
                self.session_id, self.info.backend_process_id, self.upstream_exit_grace,
            )  # fmt: skip
        return False

    async def _give_back(self, ending: Ending) -> bool:
        """Let the pool keep the backend, if the client left it idle and it is clean."""
        offer = self.upstream_handle.give_back
        if offer is None or ending.reason is not EndReason.CLIENT_LEFT:
            return False
        if not self.relay.clean_exit or self.cancel_sent:
            return False
        return await offer()

    def _announce(self, ending: Ending) -> None:
        log.info(
            "session %s of %r to %r ended: %s%s", self.session_id, self.info.user,
            self.info.target, ending.reason, f" ({ending.detail})" if ending.detail else "",
        )  # fmt: skip
        for listener in [*self.end_listeners, *(o.session_ended for o in self.observers)]:
            try:
                listener(self, ending)
            except Exception:
                log.exception("session %s: end listener failed", self.session_id)
        self._done.set()

    def _relay_stopped(self, why: RelayStop, error: PgwardenError | None) -> None:
        if why is RelayStop.DEADLINE:
            self.terminate(self.expiry_ending())
            return
        if why is RelayStop.REFUSED and error is not None:
            self.terminate(
                Ending(EndReason.REFUSED, error.message, error.sqlstate, detail=str(error))
            )
            return
        self.terminate(_ending_for(why, error, upstream_told_client=self.relay.upstream_sent_fatal))

    def expiry_ending(self) -> Ending:
        """The ending for a grant that ran out (what the enforcer also uses)."""
        return Ending(EndReason.EXPIRED, expiry_message(self.info), detail="grant expired")


def expiry_message(info: SessionInfo) -> str:
    at = info.grant_ends_at.strftime("%H:%M:%S UTC")
    return (
        f'pgwarden: access to "{info.target}" ({info.access_level}) expired at {at}; '
        f"request again with: pgwarden request {info.target} --access {info.access_level}"
    )


def _ending_for(
    why: RelayStop, error: PgwardenError | None, *, upstream_told_client: bool
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
