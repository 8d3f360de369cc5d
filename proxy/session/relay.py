"""The relay: the hot path that pumps bytes between a logged-in client and its upstream backend.

Each received chunk is forwarded whole, at once, from the `data_received` callback: no queue, no
task switch, no copy. Beside it a `FrameScanner` per direction walks the message boundaries (one
header unpack per message) and hands the few messages we must understand to the relay:

- client → upstream: Query, Sync and FunctionCall start work the backend answers with one
  ReadyForQuery each; a Terminate means the client is leaving;
- upstream → client: ReadyForQuery ends that work; an ErrorResponse of severity FATAL means the
  backend has told the client itself why it is going away.

So the relay always knows whether a query is running (`busy`) and whether the client-bound stream
stands at a message boundary (where a FATAL ErrorResponse may be injected without corrupting the
stream). A message that breaks the protocol (too long, bad length) is not forwarded: the relay
stops and reports it.

Backpressure is end to end: when one side's write buffer fills, the other side stops being read
until it drains (SECURITY.md row 34), so a client that never reads holds at most the transport's
high-water mark in pgwarden, not the result set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from enum import StrEnum

from proxy.errors import PgwardenError
from proxy.net.peer import Peer
from proxy.wire import (
    COPY_DATA,
    ERROR_RESPONSE,
    FUNCTION_CALL,
    QUERY,
    READY_FOR_QUERY,
    SYNC,
    TERMINATE,
    Frame,
    FrameScanner,
    RemoteProtocolError,
    Terminate,
    TransactionStatus,
)
from proxy.wire.limits import DEFAULT_MAX_MESSAGE_LENGTH

# A chunk that is exactly one Terminate: the client leaving (`_leave`).
TERMINATE_MESSAGE = Terminate().encode()
# Each of these is answered by exactly one ReadyForQuery.
ANSWERED_BY_READY = frozenset((QUERY, SYNC, FUNCTION_CALL))
CLIENT_MESSAGES_OBSERVED = (*ANSWERED_BY_READY, TERMINATE)
UPSTREAM_MESSAGES_OBSERVED = (READY_FOR_QUERY, ERROR_RESPONSE)
# The non-localized severity field of an ErrorResponse that ends the connection.
_FATAL_SEVERITIES = (b"\0VFATAL\0", b"\0VPANIC\0")


class RelayStop(StrEnum):
    """Why the relay stopped on its own."""

    DEADLINE = "client sent data after the grant's deadline"
    CLIENT_TERMINATED = "client sent Terminate"
    CLIENT_CLOSED = "client closed the connection"
    UPSTREAM_CLOSED = "database closed the connection"
    CLIENT_PROTOCOL_VIOLATION = "client broke the protocol"
    REFUSED = "an observer refused the client's messages"
    UPSTREAM_PROTOCOL_VIOLATION = "database broke the protocol"


StopHandler = Callable[[RelayStop, PgwardenError | None], None]
FramesHandler = Callable[[list[Frame]], None]
ClientFramesHandler = Callable[[list[Frame]], "Future[None] | None"]

# Ending a session mid-message: at most this much more of the message in progress is forwarded so
# that the client gets a clean FATAL after it; beyond that the connection is simply closed.
MAX_DRAIN_BYTES = 1024 * 1024


def _never() -> bool:
    return False


class Relay:
    """Forwards both directions between two peers until told to stop or one side ends."""

    def __init__(
        self,
        client: Peer,
        upstream: Peer,
        on_stop: StopHandler,
        *,
        max_client_message: int = DEFAULT_MAX_MESSAGE_LENGTH,
        deadline_passed: Callable[[], bool] = _never,
        client_observed: Iterable[int] = (),
        upstream_observed: Iterable[int] = (),
        on_client_frames: ClientFramesHandler | None = None,
        on_upstream_frames: FramesHandler | None = None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self._on_stop = on_stop
        self._deadline_passed = deadline_passed
        self._draining: asyncio.Future[bool] | None = None
        self._held: list[tuple[bytes, bool]] | None = None  # client data waiting for a record
        self._drained = 0
        self._to_upstream = FrameScanner(
            {*CLIENT_MESSAGES_OBSERVED, *client_observed}, max_client_message, COPY_DATA
        )
        self._to_client = FrameScanner(
            {*UPSTREAM_MESSAGES_OBSERVED, *upstream_observed}, count_type=COPY_DATA
        )
        self._on_client_frames = on_client_frames
        self._on_upstream_frames = on_upstream_frames
        self._awaiting_ready = 0
        self.upstream_sent_fatal = False
        self.clean_exit = False  # the client left alone with the backend idle (see _leave)
        self.stopped = False
        self.bytes_from_client = 0
        self.bytes_from_upstream = 0

    @property
    def busy(self) -> bool:
        """Whether the backend is working on something the client sent (a query is running)."""
        return self._awaiting_ready > 0

    @property
    def copy_bytes_from_client(self) -> int:
        """CopyData payload bytes the client sent so far (counted, never copied)."""
        return self._to_upstream.counted_bytes

    @property
    def copy_bytes_to_client(self) -> int:
        return self._to_client.counted_bytes

    @property
    def client_stream_at_boundary(self) -> bool:
        """Whether everything forwarded to the client so far ends with a complete message."""
        return self._to_client.at_boundary

    def start(self, client_pending: bytes = b"", upstream_pending: bytes = b"") -> None:
        """Begin relaying; bytes that arrived during the handshake go first, in order."""
        self.upstream.on_pause_writing = self.client.pause_reading
        self.upstream.on_resume_writing = self.client.resume_reading
        self.client.on_pause_writing = self.upstream.pause_reading
        self.client.on_resume_writing = self.upstream.resume_reading
        self.client.on_connection_lost = lambda _peer: self._stop(RelayStop.CLIENT_CLOSED)
        self.upstream.on_connection_lost = lambda _peer: self._stop(RelayStop.UPSTREAM_CLOSED)
        if upstream_pending:
            self._from_upstream(upstream_pending)
        if client_pending:
            self._from_client(client_pending)
        if not self.stopped:
            self.upstream.start_relay(self._from_upstream)
        if not self.stopped:
            self.client.start_relay(self._from_client)

    def stop(self) -> None:
        """Forward nothing more, in either direction (what arrives later is dropped)."""
        self.stopped = True
        if self._draining is not None and not self._draining.done():
            self._draining.set_result(False)

    def drain_to_boundary(self) -> asyncio.Future[bool]:
        """Stop forwarding the client's data; forward the upstream's only up to the end of the
        message in progress. The future is True once the client stream stands at a boundary,
        False if the relay stopped first or the message is too long to finish."""
        self.stopped = True
        self._draining = asyncio.get_running_loop().create_future()
        if self._to_client.at_boundary:
            self._draining.set_result(True)
        else:
            self.upstream.resume_reading()  # the rest of the message may sit behind backpressure
        return self._draining

    def _from_client(self, data: bytes) -> None:
        if self.stopped:
            return
        if self._deadline_passed():
            # Checked per chunk, not only by the enforcer's timer: a COMMIT that arrives after
            # the grant's end must never reach the database.
            self._stop(RelayStop.DEADLINE)
            return
        try:
            frames = self._to_upstream.scan(data)
        except RemoteProtocolError as exc:
            self._stop(RelayStop.CLIENT_PROTOCOL_VIOLATION, exc)
            return
        terminate = False
        for frame in frames:
            if frame.type == TERMINATE:
                terminate = True
            elif frame.type in ANSWERED_BY_READY:
                self._awaiting_ready += 1
        wait = None
        if frames and self._on_client_frames is not None:
            try:
                wait = self._on_client_frames(frames)
            except PgwardenError as exc:  # an observer refuses (the audit log fails closed)
                self._stop(RelayStop.REFUSED, exc)
                return
        if self._held is not None or wait is not None:
            self._hold(data, terminate, wait)
            return
        if data == TERMINATE_MESSAGE:
            self._leave()
            return
        self._forward(data, terminate)

    def _leave(self) -> None:
        """The client's Terminate, alone: not forwarded, since the session's exit sends the
        backend its own — or, if the backend is idle (nothing in flight, the last ReadyForQuery
        said I, the stream at a boundary), may keep it for the next session (pool.py). From here
        what the backend sends waits in its peer's inbox instead of being dropped."""
        self.bytes_from_client += len(TERMINATE_MESSAGE)
        scanner = self._to_client
        idle = scanner.last_ready_status in (None, TransactionStatus.IDLE)
        self.clean_exit = self._awaiting_ready == 0 and scanner.at_boundary and idle
        if self.clean_exit:
            self.upstream.detach()
        self._stop(RelayStop.CLIENT_TERMINATED)

    def _forward(self, data: bytes, terminate: bool) -> None:
        self.bytes_from_client += len(data)
        self.upstream.write(data)
        if terminate:
            self._stop(RelayStop.CLIENT_TERMINATED)

    def _hold(self, data: bytes, terminate: bool, wait: Future[None] | None) -> None:
        """Keep client data, in order, until a record it depends on is durable."""
        if self._held is None:
            self._held = []
            self.client.pause_reading()
        self._held.append((data, terminate))
        if wait is not None:
            asyncio.wrap_future(wait).add_done_callback(self._release)

    def _release(self, done: asyncio.Future[None]) -> None:
        held, self._held = self._held or [], None
        if self.stopped:
            return
        if not done.cancelled() and (error := done.exception()) is not None:
            failure = error if isinstance(error, PgwardenError) else PgwardenError(str(error))
            self._stop(RelayStop.REFUSED, failure)
            return
        for data, terminate in held:
            self._forward(data, terminate)
        self.client.resume_reading()

    def _from_upstream(self, data: bytes) -> None:
        if self.stopped:
            if self._draining is not None and not self._draining.done():
                self._drain(data)
            return
        try:
            frames = self._to_client.scan(data)
        except RemoteProtocolError as exc:
            self._stop(RelayStop.UPSTREAM_PROTOCOL_VIOLATION, exc)
            return
        for frame in frames:
            if frame.type == READY_FOR_QUERY:
                self._awaiting_ready = max(0, self._awaiting_ready - 1)
            elif frame.type == ERROR_RESPONSE and any(
                field in b"\0" + frame.payload for field in _FATAL_SEVERITIES
            ):
                self.upstream_sent_fatal = True
        if frames and self._on_upstream_frames is not None:
            self._on_upstream_frames(frames)
        self.bytes_from_upstream += len(data)
        self.client.write(data)

    def _drain(self, data: bytes) -> None:
        assert self._draining is not None
        end = self._to_client.boundary_offset(data)
        piece = data if end is None else data[:end]
        self._drained += len(piece)
        if self._drained > MAX_DRAIN_BYTES:
            self._draining.set_result(False)
            return
        self._to_client.scan(piece)
        self.client.write(piece)
        if end is not None:
            self._draining.set_result(True)

    def _stop(self, why: RelayStop, error: PgwardenError | None = None) -> None:
        if self.stopped:
            return
        self.stopped = True
        self._on_stop(why, error)
