"""The authentication exchange: the server's `R` requests and the client's `p` responses.

Every authentication request shares the type byte `R` and is told apart by an Int32 code, so
`decode_authentication` dispatches on that code (an unknown code stays an opaque UnknownMessage).

The client's `p` is worse: PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse all
use it and only the state of the exchange says which one arrived ("The exact message type can be
deduced from the context"). The codec does not guess: `decode_frontend` returns the opaque
`AuthResponse`, and the authentication state machine, which knows what it asked for, calls
`decode_password_message`, `decode_sasl_initial_response`, `decode_sasl_response` or
`decode_gss_response` on its payload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final

from proxy.wire.errors import LocalProtocolError
from proxy.wire.messages import UnknownMessage
from proxy.wire.payload import INT32, PayloadReader, cstring, message, nullable, pack
from proxy.wire.types import AUTHENTICATION, PASSWORD_MESSAGE

MD5_SALT_LENGTH: Final = 4


def _request(code: int, *parts: bytes) -> bytes:
    return message(AUTHENTICATION, pack(INT32, code), *parts)


# --- Server requests (B) --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticationOk:
    TYPE: ClassVar[int] = AUTHENTICATION
    CODE: ClassVar[int] = 0

    def encode(self) -> bytes:
        return _request(self.CODE)


@dataclass(frozen=True, slots=True)
class AuthenticationKerberosV5:
    """No longer supported by Postgres; decodable so that it can be refused by name."""

    TYPE: ClassVar[int] = AUTHENTICATION
    CODE: ClassVar[int] = 2

    def encode(self) -> bytes:
        return _request(self.CODE)


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword:
    TYPE: ClassVar[int] = AUTHENTICATION
    CODE: ClassVar[int] = 3

    def encode(self) -> bytes:
        return _request(self.CODE)


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password:
    TYPE: ClassVar[int] = AUTHENTICATION
    CODE: ClassVar[int] = 5
    salt: bytes

    def encode(self) -> bytes:
        if len(self.salt) != MD5_SALT_LENGTH:
            raise LocalProtocolError(f"an MD5 salt is 4 bytes, not {len(self.salt)}")
        return _request(self.CODE, self.salt)


@dataclass(frozen=True, slots=True)
class AuthenticationGSS:
    TYPE: ClassVar[int] = AUTHENTICATION
    CODE: ClassVar[int] = 7

    def encode(self) -> bytes:
        return _request(self.CODE)


@dataclass(frozen=True, slots=True)
class AuthenticationGSSContinue:
    TYPE: ClassVar[int] = AUTHENTICATION
    CODE: ClassVar[int] = 8
    data: bytes

    def encode(self) -> bytes:
        return _request(self.CODE, self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationSSPI:
    TYPE: ClassVar[int] = AUTHENTICATION
    CODE: ClassVar[int] = 9

    def encode(self) -> bytes:
        return _request(self.CODE)


@dataclass(frozen=True, slots=True)
class AuthenticationSASL:
    """The SASL mechanisms offered, in the server's order of preference."""

    TYPE: ClassVar[int] = AUTHENTICATION
    CODE: ClassVar[int] = 10
    mechanisms: tuple[str, ...]

    def encode(self) -> bytes:
        if "" in self.mechanisms:
            raise LocalProtocolError("an empty mechanism name would end the list")
        return _request(self.CODE, *map(cstring, self.mechanisms), b"\0")


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue:
    TYPE: ClassVar[int] = AUTHENTICATION
    CODE: ClassVar[int] = 11
    data: bytes

    def encode(self) -> bytes:
        return _request(self.CODE, self.data)


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal:
    TYPE: ClassVar[int] = AUTHENTICATION
    CODE: ClassVar[int] = 12
    data: bytes

    def encode(self) -> bytes:
        return _request(self.CODE, self.data)


AuthenticationRequest = (
    AuthenticationOk
    | AuthenticationKerberosV5
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationGSS
    | AuthenticationGSSContinue
    | AuthenticationSSPI
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
)


_Decoder = Callable[[PayloadReader], AuthenticationRequest]


def _empty(message_type: Callable[[], AuthenticationRequest]) -> _Decoder:
    def decode(reader: PayloadReader) -> AuthenticationRequest:
        reader.finish()
        return message_type()

    return decode


def _md5(reader: PayloadReader) -> AuthenticationRequest:
    salt = reader.exact(MD5_SALT_LENGTH)
    reader.finish()
    return AuthenticationMD5Password(salt)


def _sasl(reader: PayloadReader) -> AuthenticationRequest:
    mechanisms: list[str] = []
    # Each name consumes at least its NUL, so the loop is bounded by the payload size.
    while name := reader.cstring():
        mechanisms.append(name)
    reader.finish()
    return AuthenticationSASL(tuple(mechanisms))


_DECODERS: Final[dict[int, _Decoder]] = {
    AuthenticationOk.CODE: _empty(AuthenticationOk),
    AuthenticationKerberosV5.CODE: _empty(AuthenticationKerberosV5),
    AuthenticationCleartextPassword.CODE: _empty(AuthenticationCleartextPassword),
    AuthenticationMD5Password.CODE: _md5,
    AuthenticationGSS.CODE: _empty(AuthenticationGSS),
    AuthenticationGSSContinue.CODE: lambda reader: AuthenticationGSSContinue(reader.rest()),
    AuthenticationSSPI.CODE: _empty(AuthenticationSSPI),
    AuthenticationSASL.CODE: _sasl,
    AuthenticationSASLContinue.CODE: lambda reader: AuthenticationSASLContinue(reader.rest()),
    AuthenticationSASLFinal.CODE: lambda reader: AuthenticationSASLFinal(reader.rest()),
}


def decode_authentication(payload: bytes) -> AuthenticationRequest | UnknownMessage:
    """Decode an `R` payload by its code; an unknown code stays opaque."""
    reader = PayloadReader(payload, "authentication request")
    decoder = _DECODERS.get(reader.int32())
    if decoder is None:
        return UnknownMessage(AUTHENTICATION, payload)
    return decoder(reader)


# --- Client responses (F) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """A `p` message whose kind is not known yet; narrow it with a `decode_*` function below."""

    TYPE: ClassVar[int] = PASSWORD_MESSAGE
    payload: bytes

    def encode(self) -> bytes:
        return message(self.TYPE, self.payload)


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """A password, cleartext or MD5-hashed as the server asked."""

    TYPE: ClassVar[int] = PASSWORD_MESSAGE
    password: str

    def encode(self) -> bytes:
        return message(self.TYPE, cstring(self.password))


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    """The chosen mechanism and the client-first message (None: no initial response)."""

    TYPE: ClassVar[int] = PASSWORD_MESSAGE
    mechanism: str
    data: bytes | None

    def encode(self) -> bytes:
        return message(self.TYPE, cstring(self.mechanism), nullable(self.data))


@dataclass(frozen=True, slots=True)
class SASLResponse:
    TYPE: ClassVar[int] = PASSWORD_MESSAGE
    data: bytes

    def encode(self) -> bytes:
        return message(self.TYPE, self.data)


@dataclass(frozen=True, slots=True)
class GSSResponse:
    TYPE: ClassVar[int] = PASSWORD_MESSAGE
    data: bytes

    def encode(self) -> bytes:
        return message(self.TYPE, self.data)


def decode_password_message(payload: bytes) -> PasswordMessage:
    """Read a `p` payload as a PasswordMessage (after AuthenticationCleartextPassword/MD5)."""
    reader = PayloadReader(payload, "PasswordMessage")
    password = reader.cstring()
    reader.finish()
    return PasswordMessage(password)


def decode_sasl_initial_response(payload: bytes) -> SASLInitialResponse:
    """Read a `p` payload as a SASLInitialResponse (the first answer to AuthenticationSASL)."""
    reader = PayloadReader(payload, "SASLInitialResponse")
    mechanism = reader.cstring()
    data = reader.value()
    reader.finish()
    return SASLInitialResponse(mechanism, data)


def decode_sasl_response(payload: bytes) -> SASLResponse:
    """Read a `p` payload as a SASLResponse (the answer to AuthenticationSASLContinue)."""
    return SASLResponse(payload)


def decode_gss_response(payload: bytes) -> GSSResponse:
    """Read a `p` payload as a GSSResponse (GSSAPI or SSPI data)."""
    return GSSResponse(payload)
