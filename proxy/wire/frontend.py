"""Messages a client sends (F) in the typed phase, and `decode_frontend`.

pgwarden reads these from its clients and sends them upstream. The `p` message (password, SASL or
GSS response) decodes to the opaque `AuthResponse`: see `authentication` for why. Startup-phase
packets (StartupMessage, SSLRequest, CancelRequest...) have no type byte and live in `startup`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final, Literal, Self, cast

from proxy.wire.authentication import AuthResponse
from proxy.wire.errors import LocalProtocolError
from proxy.wire.framing import Frame
from proxy.wire.messages import CopyData, CopyDone, EmptyMessage, UnknownMessage
from proxy.wire.payload import (
    INT16,
    INT32,
    UINT32,
    PayloadReader,
    cstring,
    int16_array,
    message,
    nullables,
    pack,
    uint32_array,
)
from proxy.wire.types import (
    BIND,
    CLOSE,
    COPY_FAIL,
    DESCRIBE,
    EXECUTE,
    FLUSH,
    FUNCTION_CALL,
    PARSE,
    QUERY,
    SYNC,
    TERMINATE,
)

# Describe and Close target a prepared statement ('S') or a portal ('P').
Target = Literal["S", "P"]
TARGETS: Final = ("S", "P")


@dataclass(frozen=True, slots=True)
class Query:
    """A simple-protocol query string."""

    TYPE: ClassVar[int] = QUERY
    query: str

    def encode(self) -> bytes:
        return message(self.TYPE, cstring(self.query))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "Query")
        result = cls(reader.cstring())
        reader.finish()
        return result


@dataclass(frozen=True, slots=True)
class Parse:
    TYPE: ClassVar[int] = PARSE
    statement: str
    query: str
    param_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        parts = (cstring(self.statement), cstring(self.query), uint32_array(self.param_types))
        return message(self.TYPE, *parts)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "Parse")
        statement, query = reader.cstring(), reader.cstring()
        result = cls(statement, query, reader.uint32_array(reader.count()))
        reader.finish()
        return result


@dataclass(frozen=True, slots=True)
class Bind:
    """Parameter values are None for SQL NULL (length -1)."""

    TYPE: ClassVar[int] = BIND
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def encode(self) -> bytes:
        names = cstring(self.portal) + cstring(self.statement)
        parts = (int16_array(self.param_formats), nullables(self.params))
        return message(self.TYPE, names, *parts, int16_array(self.result_formats))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "Bind")
        portal, statement = reader.cstring(), reader.cstring()
        param_formats = reader.int16_array(reader.count())
        params = tuple([reader.value() for _ in range(reader.count())])
        result_formats = reader.int16_array(reader.count())
        reader.finish()
        return cls(portal, statement, param_formats, params, result_formats)


@dataclass(frozen=True, slots=True)
class Execute:
    """Run a portal; max_rows 0 means no limit."""

    TYPE: ClassVar[int] = EXECUTE
    portal: str
    max_rows: int = 0

    def encode(self) -> bytes:
        return message(self.TYPE, cstring(self.portal), pack(INT32, self.max_rows))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "Execute")
        result = cls(reader.cstring(), reader.int32())
        reader.finish()
        return result


def _encode_target(type_byte: int, kind: str, name: str) -> bytes:
    if kind not in TARGETS:
        raise LocalProtocolError(f"target must be 'S' or 'P', not {kind!r}")
    return message(type_byte, kind.encode("ascii"), cstring(name))


def _decode_target(payload: bytes, what: str) -> tuple[Target, str]:
    reader = PayloadReader(payload, what)
    kind = chr(reader.uint8())
    if kind not in TARGETS:
        reader.fail(f"invalid target {kind!r}")
    name = reader.cstring()
    reader.finish()
    return cast(Target, kind), name


@dataclass(frozen=True, slots=True)
class Describe:
    TYPE: ClassVar[int] = DESCRIBE
    kind: Target
    name: str

    def encode(self) -> bytes:
        return _encode_target(self.TYPE, self.kind, self.name)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        return cls(*_decode_target(payload, "Describe"))


@dataclass(frozen=True, slots=True)
class Close:
    TYPE: ClassVar[int] = CLOSE
    kind: Target
    name: str

    def encode(self) -> bytes:
        return _encode_target(self.TYPE, self.kind, self.name)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        return cls(*_decode_target(payload, "Close"))


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """The fast-path function call; argument values are None for SQL NULL."""

    TYPE: ClassVar[int] = FUNCTION_CALL
    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def encode(self) -> bytes:
        parts = (int16_array(self.arg_formats), nullables(self.args))
        result = pack(INT16, self.result_format)
        return message(self.TYPE, pack(UINT32, self.function_oid), *parts, result)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "FunctionCall")
        function_oid = reader.uint32()
        arg_formats = reader.int16_array(reader.count())
        args = tuple([reader.value() for _ in range(reader.count())])
        result = cls(function_oid, arg_formats, args, reader.int16())
        reader.finish()
        return result


@dataclass(frozen=True, slots=True)
class CopyFail:
    TYPE: ClassVar[int] = COPY_FAIL
    message: str

    def encode(self) -> bytes:
        return message(self.TYPE, cstring(self.message))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "CopyFail")
        result = cls(reader.cstring())
        reader.finish()
        return result


@dataclass(frozen=True, slots=True)
class Sync(EmptyMessage):
    TYPE: ClassVar[int] = SYNC


@dataclass(frozen=True, slots=True)
class Flush(EmptyMessage):
    TYPE: ClassVar[int] = FLUSH


@dataclass(frozen=True, slots=True)
class Terminate(EmptyMessage):
    TYPE: ClassVar[int] = TERMINATE


FrontendMessage = (
    Query
    | Parse
    | Bind
    | Execute
    | Describe
    | Close
    | Sync
    | Flush
    | FunctionCall
    | CopyData
    | CopyDone
    | CopyFail
    | Terminate
    | AuthResponse
    | UnknownMessage
)

_DECODERS: Final[dict[int, Callable[[bytes], FrontendMessage]]] = {
    Query.TYPE: Query.decode,
    Parse.TYPE: Parse.decode,
    Bind.TYPE: Bind.decode,
    Execute.TYPE: Execute.decode,
    Describe.TYPE: Describe.decode,
    Close.TYPE: Close.decode,
    Sync.TYPE: Sync.decode,
    Flush.TYPE: Flush.decode,
    FunctionCall.TYPE: FunctionCall.decode,
    CopyData.TYPE: CopyData.decode,
    CopyDone.TYPE: CopyDone.decode,
    CopyFail.TYPE: CopyFail.decode,
    Terminate.TYPE: Terminate.decode,
    AuthResponse.TYPE: AuthResponse,
}


def decode_frontend(frame: Frame) -> FrontendMessage:
    """Decode a frame a client sent. Raises RemoteProtocolError for a malformed payload."""
    decoder = _DECODERS.get(frame.type)
    if decoder is None:
        return UnknownMessage(frame.type, frame.payload)
    return decoder(frame.payload)
