"""The startup phase: the untyped packets a client sends before the typed message stream.

A startup packet is an Int32 length (counting itself) and an Int32 code: a protocol version
(StartupMessage) or a request code (SSLRequest, GSSENCRequest, CancelRequest). `StartupParser`
reads them h11 style, checking the length before buffering anything (8..10000 bytes); the caller
switches to a `framing.MessageReader` after the StartupMessage and hands it `take_pending_data()`.

Two rules the session builds on:

- After SSLRequest or GSSENCRequest, `has_pending_data()` says whether the client sent bytes before
  our one-byte answer. Those bytes were not encrypted and may be a man-in-the-middle's
  (CVE-2021-23214): the session must refuse them, never parse them.
- A client asking for protocol 3.x with x > 0, or sending `_pq_.` options, gets exactly one
  NegotiateProtocolVersion (`negotiate_protocol_version`) and continues with 3.0.
- A Terminate message instead of a startup packet (a client giving up) raises
  `TerminateBeforeStartup`, which the session answers with silence, not an invalid length.

Name checks and the database-defaults-to-user rule are in `names`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from struct import Struct
from types import MappingProxyType
from typing import ClassVar, Final

from proxy.wire import sqlstate
from proxy.wire.backend import NegotiateProtocolVersion, check_cancel_key
from proxy.wire.buffer import ReceiveBuffer
from proxy.wire.errors import (
    LocalProtocolError,
    MalformedCancelRequest,
    RemoteProtocolError,
    TerminateBeforeStartup,
)
from proxy.wire.framing import NEED_DATA, NeedData
from proxy.wire.limits import (
    CANCEL_REQUEST_HEADER_LENGTH,
    ENCRYPTION_REQUEST_LENGTH,
    MAX_STARTUP_PACKET_LENGTH,
    MIN_MESSAGE_LENGTH,
    MIN_STARTUP_PACKET_LENGTH,
)
from proxy.wire.payload import INT32, pack
from proxy.wire.types import TERMINATE

# Request codes: 1234 in the high 16 bits, so that no protocol version can collide with them.
CANCEL_REQUEST_CODE: Final = 80877102  # 1234.5678
SSL_REQUEST_CODE: Final = 80877103  # 1234.5679
GSSENC_REQUEST_CODE: Final = 80877104  # 1234.5680

PROTOCOL_MAJOR: Final = 3
# The newest 3.x pgwarden speaks; clients asking for more get NegotiateProtocolVersion.
SUPPORTED_MINOR: Final = 0
PROTOCOL_OPTION_PREFIX: Final = "_pq_."

# The fixed part of a startup packet: its length and its code (or major/minor version).
HEAD: Final = Struct("!iI")
VERSION: Final = Struct("!HH")
# A Terminate message ('X', Int32 4) where a startup packet belongs: read as a startup length, its
# first four bytes are 'X' 0 0 0, far above any real one; the fifth is the 4 of its own length.
TERMINATE_AS_LENGTH: Final = TERMINATE << 24
TERMINATE_HEAD: Final = Struct("!iB")

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SSLRequest:
    CODE: ClassVar[int] = SSL_REQUEST_CODE

    def encode(self) -> bytes:
        return HEAD.pack(ENCRYPTION_REQUEST_LENGTH, self.CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    CODE: ClassVar[int] = GSSENC_REQUEST_CODE

    def encode(self) -> bytes:
        return HEAD.pack(ENCRYPTION_REQUEST_LENGTH, self.CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel the query of the backend with this key: 4 bytes in protocol 3.0, 4..256 in 3.2."""

    CODE: ClassVar[int] = CANCEL_REQUEST_CODE
    process_id: int
    secret_key: bytes

    def encode(self) -> bytes:
        check_cancel_key(self.secret_key, LocalProtocolError)
        length = CANCEL_REQUEST_HEADER_LENGTH + len(self.secret_key)
        return HEAD.pack(length, self.CODE) + pack(INT32, self.process_id) + self.secret_key


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The first packet of a session: protocol version and run-time parameters.

    `parameters` are the ordinary (name, value) pairs in packet order, `options` included, kept raw
    (`startup_settings.py` reads the settings they ask for, `options` included).
    `protocol_options` are the `_pq_.`-prefixed ones, which are protocol extensions, not settings.
    """

    parameters: Pairs
    protocol_major: int = PROTOCOL_MAJOR
    protocol_minor: int = 0
    protocol_options: Pairs = ()

    @property
    def params(self) -> Mapping[str, str]:
        """The parameters as a read-only mapping (names are unique)."""
        return MappingProxyType(dict(self.parameters))

    @property
    def user(self) -> str:
        """The `user` parameter; decoding guarantees it is present and not empty."""
        return self.params.get("user", "")

    @property
    def database(self) -> str | None:
        """The raw `database` parameter; see `names.effective_database` for its meaning."""
        return self.params.get("database")

    def encode(self) -> bytes:
        _check_pairs(self.parameters, self.protocol_options)
        pairs = (*self.parameters, *self.protocol_options)
        parts = [_strict_cstring(text) for pair in pairs for text in pair]
        body = b"".join([pack(VERSION, self.protocol_major, self.protocol_minor), *parts, b"\0"])
        length = len(body) + INT32.size
        if length > MAX_STARTUP_PACKET_LENGTH:
            raise LocalProtocolError(f"a {length}-byte startup packet exceeds the 10000-byte limit")
        return INT32.pack(length) + body


StartupRequest = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


class StartupParser:
    """Reads the startup packets of one connection; done after a StartupMessage or CancelRequest.

    It returns every SSLRequest and GSSENCRequest it reads: refusing a second one, or one inside
    TLS, is the session's decision (as is answering it and checking `has_pending_data()` first).
    """

    __slots__ = ("_buffer", "_done", "_error")

    def __init__(self) -> None:
        self._buffer = ReceiveBuffer()
        self._done = False
        self._error: RemoteProtocolError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes. After an error nothing more is kept."""
        if self._error is None:
            self._buffer.feed(data)

    def has_pending_data(self) -> bool:
        """Whether bytes are buffered beyond the packets returned so far."""
        return len(self._buffer) > 0

    def take_pending_data(self) -> bytes:
        """Remove and return the buffered bytes (to feed the typed-phase reader)."""
        return self._buffer.take_all()

    def next_message(self) -> StartupRequest | NeedData:
        """The next startup packet, or NEED_DATA. Raises RemoteProtocolError, then keeps raising."""
        if self._error is not None:
            raise self._error
        if self._done:
            raise LocalProtocolError("the startup phase is over; switch to a MessageReader")
        try:
            packet = self._next_packet()
            if packet is None:
                return NEED_DATA
            request = parse_startup_packet(packet)
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        self._done = isinstance(request, StartupMessage | CancelRequest)
        return request

    def _next_packet(self) -> bytes | None:
        if len(self._buffer) < INT32.size:
            return None
        (length,) = self._buffer.unpack(INT32)
        if length == TERMINATE_AS_LENGTH:
            if len(self._buffer) < TERMINATE_HEAD.size:
                return None  # one more byte tells a Terminate from a bad length
            if self._buffer.unpack(TERMINATE_HEAD)[1] == MIN_MESSAGE_LENGTH:
                raise TerminateBeforeStartup("the client sent Terminate before starting up")
        _check_length(length)
        if len(self._buffer) < length:
            return None
        return self._buffer.take(length)


def _check_length(length: int) -> None:
    # Checked on the 4-byte length alone, before any of the packet is buffered on its behalf.
    if not MIN_STARTUP_PACKET_LENGTH <= length <= MAX_STARTUP_PACKET_LENGTH:
        raise RemoteProtocolError(f"invalid length of startup packet: {length}")


def parse_startup_packet(packet: bytes) -> StartupRequest:
    """Decode one complete startup packet, its length field included."""
    if len(packet) < MIN_STARTUP_PACKET_LENGTH:
        raise RemoteProtocolError("incomplete startup packet")
    length, code = HEAD.unpack_from(packet)
    _check_length(length)
    if length != len(packet):
        raise RemoteProtocolError("startup packet length does not match its content")
    if code == CANCEL_REQUEST_CODE:
        return _parse_cancel(packet)
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        if length != ENCRYPTION_REQUEST_LENGTH:
            raise RemoteProtocolError("invalid length of encryption request packet")
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    return _parse_startup_message(code, packet[HEAD.size :])


def _parse_cancel(packet: bytes) -> CancelRequest:
    if len(packet) < CANCEL_REQUEST_HEADER_LENGTH:
        raise MalformedCancelRequest("invalid length of cancel request packet")
    key = packet[CANCEL_REQUEST_HEADER_LENGTH:]
    check_cancel_key(key, MalformedCancelRequest)
    (process_id,) = INT32.unpack_from(packet, HEAD.size)
    return CancelRequest(process_id, key)


def _parse_startup_message(version: int, body: bytes) -> StartupMessage:
    major, minor = version >> 16, version & 0xFFFF
    if major != PROTOCOL_MAJOR:
        raise RemoteProtocolError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0",
            sqlstate=sqlstate.FEATURE_NOT_SUPPORTED,
        )
    pairs = _split_pairs(body)
    _check_unique(pairs, RemoteProtocolError)
    if not dict(pairs).get("user"):
        raise RemoteProtocolError(
            "no PostgreSQL user name specified in startup packet",
            sqlstate=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
        )
    parameters, protocol_options = _partition(pairs)
    return StartupMessage(parameters, major, minor, protocol_options)


def _split_pairs(body: bytes) -> Pairs:
    """name\\0value\\0...\\0 -> pairs, in one linear pass whatever the values hold."""
    if not body.endswith(b"\0"):
        raise RemoteProtocolError("invalid startup packet layout: expected terminator as last byte")
    content = body[:-1]
    if not content:
        return ()
    if not content.endswith(b"\0"):
        raise RemoteProtocolError("invalid startup packet layout: expected terminator as last byte")
    items = content[:-1].split(b"\0")
    if len(items) % 2:
        raise RemoteProtocolError("invalid startup packet layout: a parameter has no value")
    try:
        texts = [item.decode("utf-8") for item in items]
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError("invalid startup packet: not valid UTF-8") from exc
    return tuple(zip(texts[::2], texts[1::2], strict=True))


def _partition(pairs: Iterable[tuple[str, str]]) -> tuple[Pairs, Pairs]:
    parameters: list[tuple[str, str]] = []
    options: list[tuple[str, str]] = []
    for pair in pairs:
        (options if pair[0].startswith(PROTOCOL_OPTION_PREFIX) else parameters).append(pair)
    return tuple(parameters), tuple(options)


def _check_unique(
    pairs: Pairs, error: type[RemoteProtocolError] | type[LocalProtocolError]
) -> None:
    seen: set[str] = set()
    for name, _ in pairs:
        if not name:
            raise error("invalid startup packet layout: empty parameter name")
        if name in seen:
            raise error(f"duplicate startup parameter {name!r}")
        seen.add(name)


def _check_pairs(parameters: Pairs, protocol_options: Pairs) -> None:
    """What encode() refuses: packets that could not decode back to the same message."""
    _check_unique(parameters + protocol_options, LocalProtocolError)
    if any(name.startswith(PROTOCOL_OPTION_PREFIX) for name, _ in parameters):
        raise LocalProtocolError("`_pq_.` options belong in protocol_options")
    if not all(name.startswith(PROTOCOL_OPTION_PREFIX) for name, _ in protocol_options):
        raise LocalProtocolError("protocol_options must start with `_pq_.`")


def _strict_cstring(text: str) -> bytes:
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError("startup parameters must be valid UTF-8") from exc
    if b"\0" in encoded:
        raise LocalProtocolError("startup parameters cannot contain NUL")
    return encoded + b"\0"


def negotiate_protocol_version(startup: StartupMessage) -> NegotiateProtocolVersion | None:
    """The one NegotiateProtocolVersion to send before authentication, or None.

    Sent when the client asked for a newer minor version than 3.0 or for any `_pq_.` option (we
    recognise none), as Postgres does; the session then continues with protocol 3.0.
    """
    if startup.protocol_minor <= SUPPORTED_MINOR and not startup.protocol_options:
        return None
    unrecognized = tuple(name for name, _ in startup.protocol_options)
    newest_minor = min(startup.protocol_minor, SUPPORTED_MINOR)
    return NegotiateProtocolVersion(PROTOCOL_MAJOR, newest_minor, unrecognized)
