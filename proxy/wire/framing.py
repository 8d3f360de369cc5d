"""The typed phase: cut a byte stream into (type, payload) frames, h11 style.

Every message after the startup packet is a type byte, an Int32 length that counts itself, and a
payload. Two readers share one length rule (`check_length`), applied to the header *before* any of
the body is buffered: a length below 4, at or above 2**31 (negative as an Int32), or a payload above
the reader's cap is a `RemoteProtocolError` (08P01), so memory stays bounded by the cap.

- `MessageReader` buffers whole messages: `feed(bytes)`, then `next_message()` until it returns
  `NEED_DATA`. The session uses it while it interprets every message (authentication, pre-auth
  pipelining checks): it creates it with `max_length=MAX_PREAUTH_MESSAGE_LENGTH` (65535) and
  raises `max_length` once the client is authenticated. At EOF, `has_pending_data()` says whether
  a message was cut short.
- `FrameScanner` observes a stream the relay forwards untouched. It returns only the messages whose
  type is "interesting" (for audit, transaction state) and walks past the others without copying,
  keeping at most a partial header or one partial interesting message between chunks.

The typed decoders live in `frontend` and `backend`: the type bytes overlap between directions.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum, StrEnum
from typing import Final, NamedTuple

from proxy.wire.buffer import ReceiveBuffer
from proxy.wire.errors import RemoteProtocolError
from proxy.wire.limits import (
    DEFAULT_MAX_MESSAGE_LENGTH,
    HEADER_LENGTH,
    MAX_PAYLOAD_LENGTH,
    MIN_MESSAGE_LENGTH,
)
from proxy.wire.payload import HEADER
from proxy.wire.types import READY_FOR_QUERY


class NeedData(Enum):
    """The type of the `NEED_DATA` sentinel: "feed me more bytes"."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


class Frame(NamedTuple):
    """One typed message, undecoded: its type byte (an int, e.g. `ord("Q")`) and payload."""

    type: int
    payload: bytes


class TransactionStatus(StrEnum):
    """The ReadyForQuery status byte."""

    IDLE = "I"
    IN_TRANSACTION = "T"
    FAILED = "E"


def check_max_length(max_length: int) -> int:
    """Validate a configured payload cap (a programming error, hence ValueError)."""
    if not 0 <= max_length <= MAX_PAYLOAD_LENGTH:
        raise ValueError(f"max_length must be within 0..{MAX_PAYLOAD_LENGTH}, not {max_length}")
    return max_length


def check_length(type_byte: int, length: int, max_length: int) -> None:
    """Validate a header's length field (read unsigned) against a payload cap."""
    if MIN_MESSAGE_LENGTH <= length <= max_length + MIN_MESSAGE_LENGTH:
        return
    raise length_error(type_byte, length, max_length)


def length_error(type_byte: int, length: int, max_length: int) -> RemoteProtocolError:
    """The error for a header whose length field `check_length` refused."""
    if length < MIN_MESSAGE_LENGTH:
        reason = f"length {length} is less than the minimum of {MIN_MESSAGE_LENGTH}"
    elif length > MAX_PAYLOAD_LENGTH + MIN_MESSAGE_LENGTH:
        reason = f"length {length:#x} is negative as an Int32"
    else:
        reason = f"a {length - 4}-byte payload exceeds the limit of {max_length} bytes"
    return RemoteProtocolError(
        f"invalid message length for message type {type_byte:#04x}: {reason}"
    )


_READY_STATUSES: Final = {status.value.encode("ascii"): status for status in TransactionStatus}


def ready_status(payload: bytes) -> TransactionStatus:
    """The status carried by a ReadyForQuery payload."""
    status = _READY_STATUSES.get(payload)
    if status is None:
        raise RemoteProtocolError(f"invalid ReadyForQuery message: status {payload!r}")
    return status


class MessageReader:
    """Buffers a typed byte stream and returns whole frames."""

    __slots__ = ("_buffer", "_error", "_max_length")

    def __init__(self, max_length: int = DEFAULT_MAX_MESSAGE_LENGTH) -> None:
        self._buffer = ReceiveBuffer()
        self._max_length = check_max_length(max_length)
        self._error: RemoteProtocolError | None = None

    @property
    def max_length(self) -> int:
        """The largest payload accepted; the session raises it once authentication succeeds."""
        return self._max_length

    @max_length.setter
    def max_length(self, max_length: int) -> None:
        self._max_length = check_max_length(max_length)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes. After an error nothing more is kept: the stream is dead."""
        if self._error is None:
            self._buffer.feed(data)

    def has_pending_data(self) -> bool:
        """Whether bytes are buffered that no returned frame accounts for."""
        return len(self._buffer) > 0

    @property
    def buffered(self) -> int:
        """How many bytes are buffered."""
        return len(self._buffer)

    def take_pending_data(self) -> bytes:
        """Remove and return the buffered bytes (to hand a pipelined stream to the relay)."""
        return self._buffer.take_all()

    def peek_type(self) -> int | None:
        """The type byte of the next message as soon as it has arrived (its body may not have):
        a caller expecting one type can refuse another at once instead of waiting for a body."""
        return self._buffer.first_byte()

    def next_message(self) -> Frame | NeedData:
        """The next complete frame, or NEED_DATA. Raises RemoteProtocolError, then keeps raising."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        if len(buffer) < HEADER_LENGTH:
            return NEED_DATA
        type_byte, length = buffer.unpack(HEADER)
        if not MIN_MESSAGE_LENGTH <= length <= self._max_length + MIN_MESSAGE_LENGTH:
            self._error = length_error(type_byte, length, self._max_length)
            raise self._error
        if len(buffer) < length + 1:
            return NEED_DATA
        buffer.skip(HEADER_LENGTH)
        return Frame(type_byte, buffer.take(length - MIN_MESSAGE_LENGTH))


class FrameScanner:
    """Finds message boundaries in relayed chunks and returns the interesting messages.

    The relay forwards every chunk whole; the scanner only observes. `scan(chunk)` returns, in
    order, the complete messages whose type is in `interesting`. Other messages cost one header
    unpack each: their bodies are neither copied nor sliced, even across chunk borders.

    `interesting` is a set of type bytes, e.g. `b"QZ"`. `messages_seen` counts complete messages
    of any type; `last_ready_status` is the status of the last ReadyForQuery, tracked when `Z` is
    interesting. The same length rule as `MessageReader` applies to every message, skipped or not.
    """

    __slots__ = (
        "_body",
        "_body_size",
        "_body_type",
        "_count_type",
        "_error",
        "_header",
        "_interesting",
        "_max_length",
        "_skip",
        "_track_ready",
        "counted_bytes",
        "last_ready_status",
        "messages_seen",
    )

    def __init__(
        self,
        interesting: Iterable[int],
        max_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
        count_type: int = -1,
    ) -> None:
        """`count_type`: a message type whose payload bytes are summed in `counted_bytes`
        without copying them (CopyData, for the audit log's COPY sizes); -1 for none."""
        self._interesting = frozenset(interesting)
        self._count_type = count_type
        self.counted_bytes = 0
        self._track_ready = READY_FOR_QUERY in self._interesting
        self._max_length = check_max_length(max_length)
        self._header = b""  # a header split across chunks (fewer than 5 bytes)
        self._skip = 0  # body bytes of an uninteresting message still to pass over
        self._body: bytearray | None = None  # an interesting payload split across chunks
        self._body_type = 0
        self._body_size = 0
        self._error: RemoteProtocolError | None = None
        self.messages_seen = 0
        self.last_ready_status: TransactionStatus | None = None

    @property
    def buffered(self) -> int:
        """Bytes held between chunks: at most a partial header or one partial interesting
        message (never a skipped body)."""
        return len(self._header) + (len(self._body) if self._body is not None else 0)

    @property
    def at_boundary(self) -> bool:
        """Whether the bytes scanned so far end exactly where a message ends (so a message may be
        inserted into the stream here without corrupting it)."""
        return not self._header and not self._skip and self._body is None

    def boundary_offset(self, chunk: bytes) -> int | None:
        """Where in `chunk` the message in progress ends: 0 if the stream is at a boundary now,
        None if `chunk` does not finish it. Does not consume `chunk` (call `scan` for that)."""
        if self._skip:
            return self._skip if self._skip <= len(chunk) else None
        if self._body is not None:
            missing = self._body_size - len(self._body)
            return missing if missing <= len(chunk) else None
        if not self._header:
            return 0
        used = HEADER_LENGTH - len(self._header)
        if len(chunk) < used:
            return None
        _, length = HEADER.unpack(self._header + chunk[:used])
        end = used + max(0, length - MIN_MESSAGE_LENGTH)
        return end if end <= len(chunk) else None

    def scan(self, chunk: bytes) -> list[Frame]:
        """The interesting messages completed by `chunk`. Raises RemoteProtocolError, then keeps
        raising."""
        if self._error is not None:
            raise self._error
        frames: list[Frame] = []
        try:
            # Most chunks start at a message boundary: no call to finish an earlier message.
            pending = self._skip or self._body is not None or self._header
            position = self._resume(chunk, frames) if pending else 0
            if position >= 0:
                self._walk(chunk, position, frames)
            if self._track_ready:
                self._note_ready(frames)
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        return frames

    def _walk(self, chunk: bytes, position: int, frames: list[Frame]) -> None:
        # The hot loop: one unpack and a few comparisons per message, nothing else for skipped
        # messages. Locals avoid attribute lookups.
        end = len(chunk)
        interesting = self._interesting
        limit = self._max_length + MIN_MESSAGE_LENGTH
        count_type = self._count_type
        unpack = HEADER.unpack_from
        seen = 0
        while end - position >= HEADER_LENGTH:
            type_byte, length = unpack(chunk, position)
            if length < MIN_MESSAGE_LENGTH or length > limit:
                raise length_error(type_byte, length, self._max_length)
            start = position + HEADER_LENGTH
            position = start + length - MIN_MESSAGE_LENGTH
            if type_byte == count_type:
                self.counted_bytes += length - MIN_MESSAGE_LENGTH
            if position > end:
                self._carry(type_byte, length - MIN_MESSAGE_LENGTH, chunk, start)
                break
            seen += 1
            if type_byte in interesting:
                frames.append(Frame(type_byte, chunk[start:position]))
        else:
            self._header = chunk[position:]
        self.messages_seen += seen

    def _carry(self, type_byte: int, size: int, chunk: bytes, start: int) -> None:
        """Remember a message that continues in the next chunk."""
        if type_byte in self._interesting:
            self._body = bytearray(chunk[start:])
            self._body_type = type_byte
            self._body_size = size
        else:
            self._skip = size - (len(chunk) - start)

    def _resume(self, chunk: bytes, frames: list[Frame]) -> int:
        """Finish what the previous chunk left open; the position to go on from, or -1."""
        if self._skip:
            used = min(self._skip, len(chunk))
            self._skip -= used
            return -1 if self._skip else self._completed(used)
        if self._body is not None:
            return self._resume_body(chunk, frames)
        return self._resume_header(chunk, frames)  # called only with something left open

    def _completed(self, position: int) -> int:
        self.messages_seen += 1
        return position

    def _resume_body(self, chunk: bytes, frames: list[Frame]) -> int:
        body = self._body
        assert body is not None
        used = min(self._body_size - len(body), len(chunk))
        body += chunk[:used]
        if len(body) < self._body_size:
            return -1
        frames.append(Frame(self._body_type, bytes(body)))
        self._body = None
        return self._completed(used)

    def _resume_header(self, chunk: bytes, frames: list[Frame]) -> int:
        used = HEADER_LENGTH - len(self._header)
        header = self._header + chunk[:used]
        if len(header) < HEADER_LENGTH:
            self._header = header
            return -1
        self._header = b""
        type_byte, length = HEADER.unpack(header)
        check_length(type_byte, length, self._max_length)
        size = length - MIN_MESSAGE_LENGTH
        if type_byte == self._count_type:
            self.counted_bytes += size
        if used + size > len(chunk):
            self._carry(type_byte, size, chunk, used)
            return -1
        if type_byte in self._interesting:
            frames.append(Frame(type_byte, chunk[used : used + size]))
        return self._completed(used + size)

    def _note_ready(self, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.type == READY_FOR_QUERY:
                self.last_ready_status = ready_status(frame.payload)
