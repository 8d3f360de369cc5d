"""Messages a server sends (B), other than authentication requests and errors, and
`decode_backend`.

pgwarden is the server to its clients and reads these from the upstream, so each has an encoder and
a decoder, and `decode_backend(encode(m)) == m`. Decoders check every inner length and count against
the payload and refuse trailing bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from struct import Struct
from typing import ClassVar, Final, Self

from proxy.wire.authentication import AuthenticationRequest, decode_authentication
from proxy.wire.errors import LocalProtocolError
from proxy.wire.framing import Frame, TransactionStatus, ready_status
from proxy.wire.limits import MAX_CANCEL_KEY_LENGTH, MIN_CANCEL_KEY_LENGTH
from proxy.wire.messages import CopyData, CopyDone, EmptyMessage, UnknownMessage
from proxy.wire.notices import ErrorResponse, NoticeResponse
from proxy.wire.payload import (
    INT32,
    UINT8,
    PayloadReader,
    count16,
    cstring,
    int16_array,
    message,
    nullables,
    pack,
    uint32_array,
)
from proxy.wire.types import (
    AUTHENTICATION,
    BACKEND_KEY_DATA,
    BIND_COMPLETE,
    CLOSE_COMPLETE,
    COMMAND_COMPLETE,
    COPY_BOTH_RESPONSE,
    COPY_IN_RESPONSE,
    COPY_OUT_RESPONSE,
    DATA_ROW,
    EMPTY_QUERY_RESPONSE,
    NEGOTIATE_PROTOCOL_VERSION,
    NO_DATA,
    NOTIFICATION_RESPONSE,
    PARAMETER_DESCRIPTION,
    PARAMETER_STATUS,
    PARSE_COMPLETE,
    PORTAL_SUSPENDED,
    READY_FOR_QUERY,
    ROW_DESCRIPTION,
)

# A protocol version as two UInt16: major in the high half, minor in the low half.
VERSION: Final = Struct("!HH")
# RowDescription, per field after the name: table OID, column number, type OID, type size,
# type modifier, format code.
FIELD: Final = Struct("!IhIhih")
_STATUSES: Final = frozenset(TransactionStatus)


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    TYPE: ClassVar[int] = PARAMETER_STATUS
    name: str
    value: str

    def encode(self) -> bytes:
        return message(self.TYPE, cstring(self.name), cstring(self.value))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "ParameterStatus")
        result = cls(reader.cstring(), reader.cstring())
        reader.finish()
        return result


def check_cancel_key(key: bytes, error: Callable[[str], Exception]) -> None:
    """A cancel key is 4 bytes in protocol 3.0 and 4 to 256 bytes in 3.2."""
    if not MIN_CANCEL_KEY_LENGTH <= len(key) <= MAX_CANCEL_KEY_LENGTH:
        raise error(f"a {len(key)}-byte secret key is outside 4..256 bytes")


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    """The cancellation key. Protocol 3.0 keys are exactly 4 bytes: the session checks that."""

    TYPE: ClassVar[int] = BACKEND_KEY_DATA
    process_id: int
    secret_key: bytes

    def encode(self) -> bytes:
        check_cancel_key(self.secret_key, LocalProtocolError)
        return message(self.TYPE, pack(INT32, self.process_id), self.secret_key)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "BackendKeyData")
        result = cls(reader.int32(), reader.rest())
        check_cancel_key(result.secret_key, reader.fail)
        return result


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    TYPE: ClassVar[int] = READY_FOR_QUERY
    status: TransactionStatus

    def encode(self) -> bytes:
        if self.status not in _STATUSES:
            raise LocalProtocolError(f"invalid transaction status {self.status!r}")
        return message(self.TYPE, self.status.encode("ascii"))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        return cls(ready_status(payload))


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    """The newest protocol version the server speaks for the requested major version, and the
    `_pq_.` options it did not recognise.

    The docs call the Int32 the "newest minor protocol version", but Postgres sends, and libpq
    reads, a whole version code (major << 16 | minor), e.g. 196608 for 3.0.
    """

    TYPE: ClassVar[int] = NEGOTIATE_PROTOCOL_VERSION
    protocol_major: int
    protocol_minor: int
    unrecognized_options: tuple[str, ...] = ()

    def encode(self) -> bytes:
        version = pack(VERSION, self.protocol_major, self.protocol_minor)
        options = [cstring(option) for option in self.unrecognized_options]
        return message(self.TYPE, version, pack(INT32, len(options)), *options)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "NegotiateProtocolVersion")
        major, minor = reader.unpack(VERSION)
        count = reader.int32()
        if count < 0:
            reader.fail(f"negative option count {count}")
        # Each option consumes at least its NUL: a huge count fails at the end of the payload.
        options = tuple(reader.cstring() for _ in range(count))
        reader.finish()
        return cls(major, minor, options)


@dataclass(frozen=True, slots=True)
class CommandComplete:
    TYPE: ClassVar[int] = COMMAND_COMPLETE
    tag: str

    def encode(self) -> bytes:
        return message(self.TYPE, cstring(self.tag))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "CommandComplete")
        result = cls(reader.cstring())
        reader.finish()
        return result


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription."""

    name: str
    table_oid: int = 0
    column_number: int = 0
    type_oid: int = 0
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


@dataclass(frozen=True, slots=True)
class RowDescription:
    TYPE: ClassVar[int] = ROW_DESCRIPTION
    fields: tuple[FieldDescription, ...]

    def encode(self) -> bytes:
        parts = [count16(self.fields)]
        for f in self.fields:
            values = (f.table_oid, f.column_number, f.type_oid, f.type_size, f.type_modifier)
            parts += [cstring(f.name), pack(FIELD, *values, f.format)]
        return message(self.TYPE, *parts)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "RowDescription")
        fields = []
        for _ in range(reader.count()):
            name = reader.cstring()
            fields.append(FieldDescription(name, *reader.unpack(FIELD)))
        reader.finish()
        return cls(tuple(fields))


@dataclass(frozen=True, slots=True)
class DataRow:
    """Column values; None is SQL NULL (length -1)."""

    TYPE: ClassVar[int] = DATA_ROW
    values: tuple[bytes | None, ...]

    def encode(self) -> bytes:
        return message(self.TYPE, nullables(self.values))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "DataRow")
        values = tuple([reader.value() for _ in range(reader.count())])
        reader.finish()
        return cls(values)


@dataclass(frozen=True, slots=True)
class _CopyResponse:
    """CopyInResponse, CopyOutResponse and CopyBothResponse share one layout: the overall format
    (0 text, 1 binary) and one format code per column."""

    TYPE: ClassVar[int]
    format: int
    column_formats: tuple[int, ...]

    def encode(self) -> bytes:
        return message(self.TYPE, pack(UINT8, self.format), int16_array(self.column_formats))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, cls.__name__)
        copy_format = reader.uint8()
        column_formats = reader.int16_array(reader.count())
        reader.finish()
        return cls(copy_format, column_formats)


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    TYPE: ClassVar[int] = COPY_IN_RESPONSE


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    TYPE: ClassVar[int] = COPY_OUT_RESPONSE


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    TYPE: ClassVar[int] = COPY_BOTH_RESPONSE


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    TYPE: ClassVar[int] = NOTIFICATION_RESPONSE
    process_id: int
    channel: str
    payload: str

    def encode(self) -> bytes:
        parts = (pack(INT32, self.process_id), cstring(self.channel), cstring(self.payload))
        return message(self.TYPE, *parts)

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "NotificationResponse")
        result = cls(reader.int32(), reader.cstring(), reader.cstring())
        reader.finish()
        return result


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    TYPE: ClassVar[int] = PARAMETER_DESCRIPTION
    type_oids: tuple[int, ...]

    def encode(self) -> bytes:
        return message(self.TYPE, uint32_array(self.type_oids))

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        reader = PayloadReader(payload, "ParameterDescription")
        result = cls(reader.uint32_array(reader.count()))
        reader.finish()
        return result


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(EmptyMessage):
    TYPE: ClassVar[int] = EMPTY_QUERY_RESPONSE


@dataclass(frozen=True, slots=True)
class ParseComplete(EmptyMessage):
    TYPE: ClassVar[int] = PARSE_COMPLETE


@dataclass(frozen=True, slots=True)
class BindComplete(EmptyMessage):
    TYPE: ClassVar[int] = BIND_COMPLETE


@dataclass(frozen=True, slots=True)
class CloseComplete(EmptyMessage):
    TYPE: ClassVar[int] = CLOSE_COMPLETE


@dataclass(frozen=True, slots=True)
class NoData(EmptyMessage):
    TYPE: ClassVar[int] = NO_DATA


@dataclass(frozen=True, slots=True)
class PortalSuspended(EmptyMessage):
    TYPE: ClassVar[int] = PORTAL_SUSPENDED


BackendMessage = (
    AuthenticationRequest
    | ParameterStatus
    | BackendKeyData
    | ReadyForQuery
    | ErrorResponse
    | NoticeResponse
    | NegotiateProtocolVersion
    | CommandComplete
    | RowDescription
    | DataRow
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | CopyData
    | CopyDone
    | NotificationResponse
    | ParameterDescription
    | EmptyQueryResponse
    | ParseComplete
    | BindComplete
    | CloseComplete
    | NoData
    | PortalSuspended
    | UnknownMessage
)

_DECODERS: Final[dict[int, Callable[[bytes], BackendMessage]]] = {
    AUTHENTICATION: decode_authentication,
    ParameterStatus.TYPE: ParameterStatus.decode,
    BackendKeyData.TYPE: BackendKeyData.decode,
    ReadyForQuery.TYPE: ReadyForQuery.decode,
    ErrorResponse.TYPE: ErrorResponse.decode,
    NoticeResponse.TYPE: NoticeResponse.decode,
    NegotiateProtocolVersion.TYPE: NegotiateProtocolVersion.decode,
    CommandComplete.TYPE: CommandComplete.decode,
    RowDescription.TYPE: RowDescription.decode,
    DataRow.TYPE: DataRow.decode,
    CopyInResponse.TYPE: CopyInResponse.decode,
    CopyOutResponse.TYPE: CopyOutResponse.decode,
    CopyBothResponse.TYPE: CopyBothResponse.decode,
    CopyData.TYPE: CopyData.decode,
    CopyDone.TYPE: CopyDone.decode,
    NotificationResponse.TYPE: NotificationResponse.decode,
    ParameterDescription.TYPE: ParameterDescription.decode,
    EmptyQueryResponse.TYPE: EmptyQueryResponse.decode,
    ParseComplete.TYPE: ParseComplete.decode,
    BindComplete.TYPE: BindComplete.decode,
    CloseComplete.TYPE: CloseComplete.decode,
    NoData.TYPE: NoData.decode,
    PortalSuspended.TYPE: PortalSuspended.decode,
}


def decode_backend(frame: Frame) -> BackendMessage:
    """Decode a frame a server sent. Raises RemoteProtocolError for a malformed payload."""
    decoder = _DECODERS.get(frame.type)
    if decoder is None:
        return UnknownMessage(frame.type, frame.payload)
    return decoder(frame.payload)
