"""The upstream login after TLS: reading what the server sends, authenticating, the greeting.

The upstream is an untrusted peer (SECURITY.md row 19). Everything it sends during login goes
through one `MessageStream`, a `MessageReader` capped at MAX_PREAUTH_MESSAGE_LENGTH (65535), and
the flow is a straight line that accepts exactly what Postgres sends and nothing else:

    pgwarden                                 upstream
    StartupMessage            ------>
                              <------        AuthenticationSASL | MD5Password | Cleartext | Ok
    SASLInitialResponse       ------>        (SCRAM: server-first, client-final, server-final)
    ...                       <------        AuthenticationOk
                              <------        ParameterStatus* NoticeResponse* BackendKeyData
                              <------        ReadyForQuery

Failures are raised as `LoginFailure` (pgwarden gives up: 08001, 08006 for a lost connection) or
`LoginRefused` (the server said no with a valid ErrorResponse: its SQLSTATE and message), and
`upstream_error` is the one function that turns those, and anything else that went wrong (a
timeout, a lost connection, a codec or SCRAM error), into the client-facing `UpstreamError`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Final, TypeVar

from proxy.auth import SaltedPasswordCache, ScramClient, UpstreamAuthError, md5_password_response
from proxy.errors import PgwardenError, Severity
from proxy.net.peer import Peer
from proxy.wire import (
    AUTHENTICATION,
    NEED_DATA,
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationKerberosV5,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationRequest,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSSPI,
    BackendKeyData,
    BackendMessage,
    ErrorResponse,
    Frame,
    MessageReader,
    NoticeResponse,
    ParameterStatus,
    PasswordMessage,
    ReadyForQuery,
    RemoteProtocolError,
    SASLInitialResponse,
    SASLResponse,
    TransactionStatus,
    UnknownMessage,
    decode_backend,
    encode,
    sqlstate,
)
from proxy.wire.limits import HEADER_LENGTH, MAX_PREAUTH_MESSAGE_LENGTH

# What a server may send between AuthenticationOk and ReadyForQuery. Postgres sends ~15
# ParameterStatus messages (< 1 KiB in all); 1 MiB leaves room for notices and extensions while
# bounding what a hostile upstream can make us keep per login.
MAX_GREETING_BYTES: Final = 1024 * 1024
# Protocol 3.0 cancel keys are exactly 4 bytes; we speak 3.0, so anything else is a broken server.
PROTOCOL_3_0_KEY_LENGTH: Final = 4
# How much of an upstream error message we pass on: Postgres' own are well under 200 characters.
MAX_RELAYED_MESSAGE_CHARS: Final = 500
CHANNEL_BINDING_TYPE: Final = "tls-server-end-point"  # the only type Postgres supports
_SQLSTATE: Final = re.compile(r"[0-9A-Z]{5}")
logger = logging.getLogger(__name__)

_Request = TypeVar("_Request", bound=AuthenticationRequest)
_UNSUPPORTED: Final[dict[type, str]] = {
    AuthenticationKerberosV5: "Kerberos V5",
    AuthenticationGSS: "GSSAPI",
    AuthenticationSSPI: "SSPI",
}


class UpstreamError(PgwardenError):
    """pgwarden could not log in to the upstream database. The message is fit for the client.

    `sqlstate` is the upstream's own when it refused the login (`refused` is then True), else
    08001 (could not establish the connection) or 08006 (the connection broke). Always FATAL.
    """

    sqlstate = sqlstate.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION
    severity = Severity.FATAL

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        detail: str | None = None,
        refused: bool = False,
    ) -> None:
        super().__init__(message, sqlstate=sqlstate, detail=detail)
        self.refused = refused


class LoginFailure(Exception):
    """pgwarden gives up on the login; `reason` completes "could not log in ...: <reason>"."""

    def __init__(
        self,
        reason: str,
        *,
        sqlstate: str = sqlstate.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        detail: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sqlstate = sqlstate
        self.detail = detail


class LoginRefused(Exception):
    """The upstream refused the login with a well-formed ErrorResponse."""

    def __init__(self, sqlstate: str, message: str, detail: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail


def refusal(error: ErrorResponse) -> LoginRefused | LoginFailure:
    """What an upstream ErrorResponse means: a refusal, or a broken server if it lacks fields."""
    code, text = error.sqlstate, error.message
    if code is None or not _SQLSTATE.fullmatch(code) or not text:
        return LoginFailure("the server sent an invalid error response (no SQLSTATE or message)")
    detail = error.get("D")
    return LoginRefused(code, printable(text), printable(detail) if detail else None)


def upstream_error(exc: Exception, target: str, role: str, timeout: float) -> UpstreamError:
    """The one translation from whatever went wrong to what the client is told."""
    if isinstance(exc, LoginRefused):
        message = f'pgwarden: the database refused the login for role "{role}": {exc.message}'
        return UpstreamError(message, sqlstate=exc.sqlstate, detail=exc.detail, refused=True)
    failure = _as_failure(exc, timeout)
    message = f'pgwarden: could not log in to the database for "{target}": {failure.reason}'
    return UpstreamError(message, sqlstate=failure.sqlstate, detail=failure.detail)


def _as_failure(exc: Exception, timeout: float) -> LoginFailure:
    if isinstance(exc, LoginFailure):
        return exc
    if isinstance(exc, TimeoutError):
        return LoginFailure(f"the server did not complete the login within {timeout:g} s")
    if isinstance(exc, UpstreamAuthError):
        return LoginFailure(exc.message, detail=exc.detail)
    if isinstance(exc, RemoteProtocolError):
        return LoginFailure(f"the server broke the protocol: {exc.message}")
    if isinstance(exc, OSError):  # PeerClosed included
        lost = sqlstate.CONNECTION_FAILURE
        return LoginFailure(
            "the server closed the connection during login", sqlstate=lost, detail=str(exc)
        )
    logger.error("unexpected error during upstream login", exc_info=exc)
    return LoginFailure("internal error", sqlstate=sqlstate.INTERNAL_ERROR, detail=repr(exc))


def printable(text: str, limit: int = MAX_RELAYED_MESSAGE_CHARS) -> str:
    """Upstream text made safe to show and log: control and format characters (newlines, ANSI
    escapes, bidi overrides) become "?", and the length is bounded."""
    clean = "".join("?" if unicodedata.category(char)[0] == "C" else char for char in text)
    return clean if len(clean) <= limit else clean[:limit] + "..."


def unexpected(message: BackendMessage, during: str) -> LoginFailure:
    """A message that has no place at this point of the login; named by its type byte only."""
    type_byte = message.type if isinstance(message, UnknownMessage) else message.TYPE
    shown = chr(type_byte) if 0x21 <= type_byte <= 0x7E else f"{type_byte:#04x}"
    return LoginFailure(f"the server sent an unexpected message (type {shown!r}) {during}")


class MessageStream:
    """The upstream's messages during login, each size-checked before its body is buffered."""

    def __init__(self, peer: Peer, received: bytes = b"") -> None:
        """`received`: bytes of this stream already taken from the peer (read first)."""
        self._peer = peer
        self._reader = MessageReader(MAX_PREAUTH_MESSAGE_LENGTH)
        self._reader.feed(received)
        self.consumed = 0  # bytes of whole messages returned so far

    async def receive(self) -> BackendMessage:
        """The next message. Raises PeerClosed at EOF, RemoteProtocolError for a bad message."""
        return decode_backend(await self.receive_frame())

    async def receive_frame(self) -> Frame:
        while (frame := self._reader.next_message()) is NEED_DATA:
            self._reader.feed(await self._peer.read())
        self.consumed += HEADER_LENGTH + len(frame.payload)
        return frame

    def send(self, data: bytes) -> None:
        self._peer.write(data)

    def take_unconsumed(self) -> bytes:
        """Bytes received after the last returned message, including the peer's unread inbox."""
        return self._reader.take_pending_data() + self._peer.take_buffered()


@dataclass(frozen=True, slots=True)
class AuthParams:
    """What the authentication exchange needs to know."""

    role: str
    password: str = field(repr=False)
    server_verified: bool  # TLS with a verified certificate (verify-full): cleartext needs it
    max_iterations: int
    channel_binding: bytes | None = field(default=None, repr=False)  # tls-server-end-point data
    cache: SaltedPasswordCache | None = None


async def authenticate(stream: MessageStream, params: AuthParams) -> None:
    """Answer the upstream's authentication request until AuthenticationOk."""
    request = await _next_request(stream)
    if isinstance(request, AuthenticationOk):
        return  # trust
    if isinstance(request, AuthenticationSASL):
        await _scram(stream, params, request.mechanisms)
    elif isinstance(request, AuthenticationMD5Password):
        response = md5_password_response(params.role, params.password, request.salt)
        stream.send(encode(PasswordMessage(response.decode("ascii"))))
    elif isinstance(request, AuthenticationCleartextPassword):
        if not params.server_verified:
            # Over plaintext anyone on the path reads it; over prefer/require TLS anyone who can
            # present a certificate does. Only verify-full proves who receives the password.
            raise LoginFailure(
                "the server asked for the password in cleartext, which pgwarden sends only over"
                " TLS with a verified certificate (tls: verify-full)"
            )
        stream.send(encode(PasswordMessage(params.password)))
    else:
        raise _unsupported(request)
    await _expect(stream, AuthenticationOk)


async def _scram(stream: MessageStream, params: AuthParams, offered: tuple[str, ...]) -> None:
    """SCRAM-SHA-256(-PLUS); only a verified server signature leads on to AuthenticationOk."""
    binding = None
    if params.channel_binding is not None:
        binding = (CHANNEL_BINDING_TYPE, params.channel_binding)
    client = ScramClient(
        params.role,
        params.password,
        channel_binding=binding,
        max_iterations=params.max_iterations,
        cache=params.cache,
    )
    mechanism = client.select_mechanism(offered)
    stream.send(encode(SASLInitialResponse(mechanism, client.client_first())))
    client.parse_server_first((await _expect(stream, AuthenticationSASLContinue)).data)
    # PBKDF2 costs milliseconds to a second: off the event loop, unless the cache has it.
    salted = client.cached_salted_password()
    if salted is None:
        loop = asyncio.get_running_loop()
        salted = await loop.run_in_executor(None, client.compute_salted_password)
    stream.send(encode(SASLResponse(client.client_final(salted))))
    client.receive_server_final((await _expect(stream, AuthenticationSASLFinal)).data)


async def _next_request(stream: MessageStream) -> AuthenticationRequest:
    message = await stream.receive()
    if isinstance(message, ErrorResponse):
        raise refusal(message)
    if isinstance(message, UnknownMessage) and message.type == AUTHENTICATION:
        code = int.from_bytes(message.payload[:4], "big", signed=True)
        raise LoginFailure(f"the server asked for an unsupported authentication method ({code})")
    if not isinstance(message, AuthenticationRequest):
        raise unexpected(message, "during authentication")
    return message


async def _expect(stream: MessageStream, kind: type[_Request]) -> _Request:
    request = await _next_request(stream)
    if not isinstance(request, kind):
        raise LoginFailure(
            f"the server sent {type(request).__name__} where {kind.__name__} was expected"
        )
    return request


def _unsupported(request: AuthenticationRequest) -> LoginFailure:
    name = _UNSUPPORTED.get(type(request))
    if name is None:
        return LoginFailure(f"the server sent {type(request).__name__} out of sequence")
    return LoginFailure(
        f"the server asked for {name} authentication, which pgwarden does not support"
    )


@dataclass(frozen=True, slots=True)
class Greeting:
    """What the server sends after AuthenticationOk, up to and including ReadyForQuery."""

    frames: tuple[bytes, ...]  # ParameterStatus and NoticeResponse as received, in order
    messages: tuple[ParameterStatus | NoticeResponse, ...]  # the same, decoded
    backend_key: BackendKeyData
    ready_status: TransactionStatus


async def receive_greeting(stream: MessageStream) -> Greeting:
    """Collect ParameterStatus, NoticeResponse and BackendKeyData until ReadyForQuery."""
    frames: list[bytes] = []
    messages: list[ParameterStatus | NoticeResponse] = []
    key: BackendKeyData | None = None
    start = stream.consumed
    while True:
        frame = await stream.receive_frame()
        if stream.consumed - start > MAX_GREETING_BYTES:
            raise LoginFailure("the server sent too much data after authentication")
        message = decode_backend(frame)
        if isinstance(message, ParameterStatus | NoticeResponse):
            frames.append(_raw(frame))
            messages.append(message)
        elif isinstance(message, BackendKeyData):
            key = _check_key(key, message)
        elif isinstance(message, ReadyForQuery):
            if key is None:
                raise LoginFailure("the server sent no BackendKeyData before ReadyForQuery")
            return Greeting(tuple(frames), tuple(messages), key, message.status)
        elif isinstance(message, ErrorResponse):
            raise refusal(message)  # e.g. 3D000: the database is checked after authentication
        else:
            raise unexpected(message, "after authentication")


def _raw(frame: Frame) -> bytes:
    return bytes([frame.type]) + (len(frame.payload) + 4).to_bytes(4, "big") + frame.payload


def _check_key(previous: BackendKeyData | None, key: BackendKeyData) -> BackendKeyData:
    if previous is not None:
        raise LoginFailure("the server sent BackendKeyData twice")
    if len(key.secret_key) != PROTOCOL_3_0_KEY_LENGTH:
        raise LoginFailure(
            f"the server sent a {len(key.secret_key)}-byte cancel key;"
            f" protocol 3.0 keys are {PROTOCOL_3_0_KEY_LENGTH} bytes"
        )
    return key
