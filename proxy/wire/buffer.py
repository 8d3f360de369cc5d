"""A receive buffer that consumes from the front in amortised constant time.

Deleting a consumed prefix from a bytearray moves the rest, so a parser that deletes after every
message goes quadratic when a peer trickles bytes. `ReceiveBuffer` keeps a read offset instead and
compacts only when the consumed prefix is large (h11's `ReceiveBuffer` does the same).
"""

from __future__ import annotations

from struct import Struct

from proxy.wire.limits import BUFFER_COMPACT_THRESHOLD


class ReceiveBuffer:
    """Bytes received but not yet consumed by a parser."""

    __slots__ = ("_data", "_start")

    def __init__(self) -> None:
        self._data = bytearray()
        self._start = 0

    def __len__(self) -> int:
        return len(self._data) - self._start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        self._data += data

    def first_byte(self) -> int | None:
        """The next unread byte, without consuming it; None when empty."""
        return self._data[self._start] if len(self) else None

    def unpack(self, layout: Struct) -> tuple[int, ...]:
        """Read `layout` at the front without consuming it; the caller checked the length."""
        values: tuple[int, ...] = layout.unpack_from(self._data, self._start)
        return values

    def take(self, size: int) -> bytes:
        """Consume and return the first `size` bytes; the caller checked they are there."""
        start = self._start
        with memoryview(self._data) as view:
            # One copy: slicing the view is free, bytes() copies once.
            chunk = bytes(view[start : start + size])
        self._consume(size)
        return chunk

    def skip(self, size: int) -> None:
        """Consume `size` bytes without copying them."""
        self._consume(size)

    def take_all(self) -> bytes:
        """Consume and return everything buffered."""
        return self.take(len(self))

    def _consume(self, size: int) -> None:
        self._start += size
        if self._start == len(self._data):
            # The common case (whole messages per read): reset without moving anything.
            self._data.clear()
            self._start = 0
        elif self._start > BUFFER_COMPACT_THRESHOLD and self._start * 2 > len(self._data):
            del self._data[: self._start]
            self._start = 0
