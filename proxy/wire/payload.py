"""Checked reading and writing of message payloads.

Python slicing never fails: `data[5:5 + n]` silently returns fewer than `n` bytes. Every read from
a payload therefore goes through `PayloadReader`, which checks that each field is wholly inside the
message and raises `RemoteProtocolError` otherwise; decoders end with `finish()` so that trailing
bytes after the declared content are rejected too.

Text fields ("String" in the Message Formats page) are decoded as UTF-8 with `surrogateescape`:
Postgres lets a session use any client_encoding (LATIN1, SQL_ASCII...), so the codec must carry
bytes that are not UTF-8 without failing, and re-encodes them to the very same bytes. Only the
startup packet insists on UTF-8 (names there are compared with policy). Consumers that display
text (audit) must escape the lone surrogates that stand for undecodable bytes.

The writing helpers raise `LocalProtocolError` for values the protocol cannot carry.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache
from struct import Struct
from typing import NoReturn

from proxy.wire.errors import LocalProtocolError, RemoteProtocolError
from proxy.wire.limits import MAX_COUNT, MAX_PAYLOAD_LENGTH

TEXT_ENCODING = "utf-8"
TEXT_ERRORS = "surrogateescape"

UINT8 = Struct("!B")
INT16 = Struct("!h")
UINT16 = Struct("!H")
INT32 = Struct("!i")
UINT32 = Struct("!I")
# A typed message header. The length is read unsigned so that 0xFFFFFFFF is a large number that
# fails the cap, rather than -1.
HEADER = Struct("!BI")

NULL_LENGTH = -1  # an Int32 value length of -1 means SQL NULL (Bind, DataRow, FunctionCall)
# A boolean in text format (DataRow values of a simple query): `t` or `f`.
TEXT_TRUE = b"t"


@lru_cache(maxsize=64)
def array_layout(code: str, count: int) -> Struct:
    """A compiled Struct for `count` big-endian items of `code` (cached: counts repeat)."""
    return Struct(f"!{count}{code}")


class PayloadReader:
    """A cursor over one payload whose every read is bounds-checked."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        """Bytes not yet read."""
        return len(self._data) - self._pos

    def fail(self, reason: str) -> NoReturn:
        """Raise the protocol violation for this message."""
        raise RemoteProtocolError(f"invalid {self._what} message: {reason}")

    def unpack(self, layout: Struct) -> tuple[int, ...]:
        """The next fixed-size fields."""
        if self.remaining < layout.size:
            self.fail("insufficient data left in message")
        values: tuple[int, ...] = layout.unpack_from(self._data, self._pos)
        self._pos += layout.size
        return values

    def uint8(self) -> int:
        return self.unpack(UINT8)[0]

    def int16(self) -> int:
        return self.unpack(INT16)[0]

    def int32(self) -> int:
        return self.unpack(INT32)[0]

    def uint32(self) -> int:
        return self.unpack(UINT32)[0]

    def count(self) -> int:
        """An Int16 count, read unsigned as Postgres does (0..65535)."""
        return self.unpack(UINT16)[0]

    def int16_array(self, count: int) -> tuple[int, ...]:
        return self.unpack(array_layout("h", count))

    def uint32_array(self, count: int) -> tuple[int, ...]:
        return self.unpack(array_layout("I", count))

    def exact(self, size: int) -> bytes:
        """The next `size` bytes, all of them or a protocol violation."""
        if size < 0 or size > self.remaining:
            self.fail(f"length {size} does not fit in the message")
        start = self._pos
        self._pos = start + size
        return self._data[start : self._pos]

    def value(self) -> bytes | None:
        """An Int32 length followed by that many bytes; length -1 is NULL."""
        size = self.int32()
        if size == NULL_LENGTH:
            return None
        return self.exact(size)

    def cstring_bytes(self) -> bytes:
        """A NUL-terminated string, without its terminator."""
        end = self._data.find(b"\0", self._pos)
        if end < 0:
            self.fail("string is not NUL-terminated")
        start = self._pos
        self._pos = end + 1
        return self._data[start:end]

    def cstring(self) -> str:
        return self.cstring_bytes().decode(TEXT_ENCODING, TEXT_ERRORS)

    def rest(self) -> bytes:
        """Everything left (no copy when nothing was read yet)."""
        start = self._pos
        self._pos = len(self._data)
        return self._data if start == 0 else self._data[start:]

    def finish(self) -> None:
        """Reject trailing bytes after the declared content."""
        if self.remaining:
            self.fail(f"{self.remaining} unexpected trailing bytes")


# --- Writing --------------------------------------------------------------------------------------


def pack(layout: Struct, *values: int) -> bytes:
    """`layout.pack(*values)`, with out-of-range values reported as LocalProtocolError."""
    try:
        return layout.pack(*values)
    except struct.error as exc:
        raise LocalProtocolError(f"value out of range for the protocol: {values!r}") from exc


def cstring(text: str) -> bytes:
    """`text` as a NUL-terminated protocol String."""
    try:
        encoded = text.encode(TEXT_ENCODING, TEXT_ERRORS)
    except UnicodeEncodeError as exc:
        raise LocalProtocolError("string is not encodable as UTF-8") from exc
    if b"\0" in encoded:
        raise LocalProtocolError("a protocol String cannot contain NUL")
    return encoded + b"\0"


def count16(items: Sequence[object]) -> bytes:
    """The Int16 count of `items` (0..65535)."""
    if len(items) > MAX_COUNT:
        raise LocalProtocolError(f"{len(items)} items exceed the protocol's Int16 count")
    return UINT16.pack(len(items))


def int16_array(values: Sequence[int]) -> bytes:
    return count16(values) + pack(array_layout("h", len(values)), *values)


def uint32_array(values: Sequence[int]) -> bytes:
    return count16(values) + pack(array_layout("I", len(values)), *values)


def nullable(data: bytes | None) -> bytes:
    """An Int32 length and the bytes, or length -1 for NULL."""
    if data is None:
        return INT32.pack(NULL_LENGTH)
    return pack(INT32, len(data)) + data


def nullables(items: Sequence[bytes | None]) -> bytes:
    return count16(items) + b"".join([nullable(item) for item in items])


def message(type_byte: int, *parts: bytes) -> bytes:
    """A complete typed message: type byte, Int32 length including itself, payload."""
    body = b"".join(parts)
    if len(body) > MAX_PAYLOAD_LENGTH:
        raise LocalProtocolError(f"a {len(body)}-byte payload does not fit in a message")
    return HEADER.pack(type_byte, len(body) + 4) + body
