"""What every message type has in common, and the messages both sides send.

Messages are frozen dataclasses named as in the PostgreSQL "Message Formats" page. Each has
`encode() -> bytes` (the complete wire form, header included) and a `TYPE` class attribute holding
its type byte; typed messages also have `decode(payload)`. Decoding a frame goes through
`frontend.decode_frontend` or `backend.decode_backend`, because the same type byte means different
messages in each direction (`D` is Describe from a client and DataRow from a server).

A type byte the codec does not model decodes to `UnknownMessage`, which carries the payload object
unchanged (no copy) and re-encodes to the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, Self

from proxy.wire.payload import PayloadReader, message
from proxy.wire.types import COPY_DATA, COPY_DONE


class Encodable(Protocol):
    """Anything with a wire form."""

    def encode(self) -> bytes: ...


def encode(msg: Encodable) -> bytes:
    """The wire form of any message (startup packets included)."""
    return msg.encode()


def expect_empty(payload: bytes, what: str) -> None:
    """Decode a message that has no payload."""
    PayloadReader(payload, what).finish()


class EmptyMessage:
    """Base of the messages that are just a type byte and length 4 (Sync, ParseComplete...)."""

    __slots__ = ()
    TYPE: ClassVar[int]

    def encode(self) -> bytes:
        return message(self.TYPE)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        expect_empty(payload, cls.__name__)
        return cls()


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A typed message the codec does not model, kept opaque."""

    type: int
    payload: bytes

    def encode(self) -> bytes:
        return message(self.type, self.payload)


@dataclass(frozen=True, slots=True)
class CopyData:
    """Part of a COPY data stream (F & B)."""

    TYPE: ClassVar[int] = COPY_DATA
    data: bytes

    def encode(self) -> bytes:
        return message(self.TYPE, self.data)

    @classmethod
    def decode(cls, payload: bytes) -> CopyData:
        return cls(payload)


@dataclass(frozen=True, slots=True)
class CopyDone(EmptyMessage):
    """The end of a COPY data stream (F & B)."""

    TYPE: ClassVar[int] = COPY_DONE
