"""SCRAM-SHA-256 shared parts: the error family, the message grammar, the key arithmetic.

Both state machines (`scram_server`, facing clients, and `scram_client`, facing upstream Postgres)
are built from what is here. The grammar is RFC 5802 section 7, as Postgres speaks it:

    client-first  = gs2-header client-first-bare      gs2-header = ("n" / "y" / "p=" cb-name) ",,"
    client-first-bare = "n=" saslname "," "r=" c-nonce ["," extensions]
    server-first  = "r=" c-nonce s-nonce "," "s=" salt "," "i=" iterations ["," extensions]
    client-final  = "c=" base64(gs2-header [cb-data]) "," "r=" nonce ["," extensions] "," "p=" proof
    server-final  = ("v=" base64(signature) / "e=" error) ["," extensions]
    AuthMessage   = client-first-bare "," server-first "," client-final-without-proof

Parsing is strict and total: every malformed input (size, NUL, UTF-8, attribute order, base64,
lengths) raises `ScramProtocolError` (08P01), never a bare ValueError or IndexError. An optional
mandatory extension (`m=`) and an authorization identity (`a=`) are refused, as Postgres does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

from proxy.errors import PgwardenError

_PRINTABLE = re.compile(r"[!-+\--~]*")  # 0x21-0x7E but 0x2C, the comma

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
CB_TLS_SERVER_END_POINT = "tls-server-end-point"  # the only channel binding type Postgres uses
KEY_LENGTH = 32  # SHA-256 output: proofs, signatures, StoredKey and ServerKey
# A real SCRAM message is ~50-200 bytes; nothing legitimate comes near this, so anything longer is
# refused before it is decoded or split (the wire layer's 65535-byte pre-auth cap is far looser).
MAX_SCRAM_MESSAGE_LENGTH = 2048
# Postgres and libpq send 24-character nonces (48 combined); JDBC and others are similar.
MAX_NONCE_LENGTH = 256
MAX_SALT_LENGTH = 64  # Postgres uses 16 bytes; a larger salt only costs the peer memory
MAX_ITERATIONS_DIGITS = 10  # Postgres keeps iterations in an int: at most 2147483647
NONCE_BYTES = 18  # as Postgres and libpq: 18 random bytes, 24 base64 characters
MAX_SERVER_ERROR_LENGTH = 64  # RFC 5802 server-error-values are short tokens
# Attribute names that RFC 5802 gives a fixed place; as "extensions" they are out of order/repeated.
_KNOWN_ATTRIBUTES = frozenset("acmnprsiev")
_CB_NAME = re.compile(r"[A-Za-z0-9.\-]+")
_ITERATIONS = re.compile(r"[1-9][0-9]*")


class AuthError(PgwardenError):
    """Authentication failed or could not proceed."""

    sqlstate = "28000"


class ScramProtocolError(AuthError):
    """The peer broke the SCRAM protocol (malformed message, wrong order, bad binding)."""

    sqlstate = "08P01"


class ChannelBindingError(ScramProtocolError):
    """Channel binding was refused: downgrade, wrong type, or binding data that does not match."""


class ScramStateError(ScramProtocolError):
    """A SCRAM message arrived in a state where it is not allowed (or after the exchange ended)."""


class CredentialRejection(StrEnum):
    """Why an exchange ended in InvalidPasswordError. Internal (the log, the login-failure
    counters): the client sees the same 28P01 for every one (SECURITY.md row 14). The values are
    the texts the log shows."""

    NO_CREDENTIAL = "no usable credential for this user (mock exchange)"
    WRONG_PROOF = "wrong proof"
    GRANT_ENDED = "the credential's grant ended during the exchange"
    # No exchange at all: too many failed logins from this address, or for this user name from
    # it (throttle.py); refused with the same 28P01 before any work.
    THROTTLED = "refused unchecked: too many failed logins"


class InvalidPasswordError(AuthError):
    """The one failure a client sees for a bad password, an unknown user or a missing grant.

    `reason` says which it was, for pgwarden alone; `detail` holds its text for the log."""

    sqlstate = "28P01"

    def __init__(self, username: str, reason: CredentialRejection) -> None:
        message = f'password authentication failed for user "{username}"'
        super().__init__(message, detail=reason.value)
        self.reason = reason


class UpstreamAuthError(AuthError):
    """pgwarden could not log in to the upstream server (it refused us, or misbehaved)."""

    sqlstate = "08001"  # sqlclient_unable_to_establish_sqlconnection


def malformed(reason: str) -> ScramProtocolError:
    """The error for a message that does not follow the grammar; `reason` never quotes input."""
    return ScramProtocolError(f"malformed SCRAM message ({reason})")


# --- key arithmetic (RFC 5802 section 3) ---------------------------------------------------------


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def xor_bytes(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def client_key(salted_password: bytes) -> bytes:
    return hmac_sha256(salted_password, b"Client Key")


def server_key(salted_password: bytes) -> bytes:
    return hmac_sha256(salted_password, b"Server Key")


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(value: str) -> bytes | None:
    """Canonical standard base64 (with padding) → bytes; None for anything else."""
    if not value.isascii():
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error is a ValueError
        return None
    return raw if b64encode(raw) == value else None


def new_nonce() -> str:
    """A fresh random nonce (our part of the combined nonce): printable, no comma."""
    return b64encode(secrets.token_bytes(NONCE_BYTES))


def is_printable(nonce: str) -> bool:
    """RFC 5802 `printable`: ASCII 0x21-0x7E except the comma (every character; "" is)."""
    return _PRINTABLE.fullmatch(nonce) is not None


def escape_saslname(name: str) -> str:
    """RFC 5802 saslname escaping: "=" → "=3D", "," → "=2C"."""
    return name.replace("=", "=3D").replace(",", "=2C")


# --- messages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gs2Header:
    """The GS2 header of a client-first message; `text` is what `c=` must reproduce."""

    flag: Literal["n", "y", "p"]
    cb_name: str | None
    text: str


@dataclass(frozen=True)
class ClientFirst:
    gs2: Gs2Header
    bare: str
    nonce: str


@dataclass(frozen=True)
class ClientFinal:
    channel_binding: bytes
    nonce: str
    proof: bytes = field(repr=False)
    without_proof: str


@dataclass(frozen=True)
class ServerFirst:
    """The upstream's challenge: the combined nonce, the salt and the iteration count."""

    text: str
    nonce: str
    salt: bytes
    iterations: int


@dataclass(frozen=True)
class ServerFinal:
    """Either the server signature or the server's `e=` error (sanitised)."""

    signature: bytes | None
    error: str | None


def decode_message(data: bytes) -> str:
    """Check size, NUL and UTF-8 of a SCRAM message before anything else looks at it."""
    if not data:
        raise malformed("empty message")
    if len(data) > MAX_SCRAM_MESSAGE_LENGTH:
        raise malformed(f"longer than {MAX_SCRAM_MESSAGE_LENGTH} bytes")
    if b"\x00" in data:
        raise malformed("embedded NUL byte")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed("not valid UTF-8") from None


def split_attributes(text: str) -> list[tuple[str, str]]:
    """`a=v,b=w` → [("a", "v"), ("b", "w")]; each part must be ALPHA "=" value."""
    attributes = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not (part[0].isascii() and part[0].isalpha()):
            raise malformed("attribute expected")
        attributes.append((part[0], part[2:]))
    return attributes


def expect(attributes: list[tuple[str, str]], index: int, name: str) -> str:
    """The value of attribute `name`, which must stand at position `index`."""
    if index >= len(attributes):
        raise malformed(f"attribute '{name}' missing")
    found, value = attributes[index]
    if found != name:
        raise malformed(f"attribute '{name}' expected at position {index + 1}")
    return value


def check_extensions(attributes: list[tuple[str, str]]) -> None:
    """Optional extensions are ignored, but a known attribute out of its place is an error."""
    for name, _ in attributes:
        if name in _KNOWN_ATTRIBUTES:
            raise malformed(f"unexpected attribute '{name}'")


def check_nonce(nonce: str) -> str:
    if not nonce:
        raise malformed("empty nonce")
    if len(nonce) > MAX_NONCE_LENGTH:
        raise malformed(f"nonce longer than {MAX_NONCE_LENGTH} characters")
    if not is_printable(nonce):
        raise malformed("non-printable characters in nonce")
    return nonce


def decode_key(value: str, what: str) -> bytes:
    """A base64 proof or signature, which must decode to exactly KEY_LENGTH bytes."""
    raw = b64decode_strict(value)
    if raw is None:
        raise malformed(f"{what} is not valid base64")
    if len(raw) != KEY_LENGTH:
        raise malformed(f"{what} is not {KEY_LENGTH} bytes")
    return raw


def parse_gs2_header(text: str) -> tuple[Gs2Header, str]:
    """Split a client-first message into its GS2 header and its bare part."""
    flag, sep, rest = text.partition(",")
    authzid, sep2, bare = rest.partition(",")
    if not (sep and sep2):
        raise malformed("incomplete GS2 header")
    if authzid:
        raise malformed(
            "authorization identity not supported" if authzid[0] == "a" else "bad GS2 header"
        )
    header = text[: len(flag) + 2]
    if flag in ("n", "y"):
        return Gs2Header("n" if flag == "n" else "y", None, header), bare
    if flag.startswith("p=") and _CB_NAME.fullmatch(flag[2:]):
        return Gs2Header("p", flag[2:], header), bare
    raise malformed("unexpected channel-binding flag")


def parse_client_first(text: str) -> ClientFirst:
    """Parse a client-first message; the `n=` user name is ignored, as Postgres ignores it."""
    gs2, bare = parse_gs2_header(text)
    attributes = split_attributes(bare)
    if attributes[0][0] == "m":
        raise malformed("mandatory extension not supported")
    expect(attributes, 0, "n")
    nonce = check_nonce(expect(attributes, 1, "r"))
    check_extensions(attributes[2:])
    return ClientFirst(gs2, bare, nonce)


def parse_client_final(text: str) -> ClientFinal:
    """Parse a client-final message; the proof must be the last attribute."""
    attributes = split_attributes(text)
    channel_binding = b64decode_strict(expect(attributes, 0, "c"))
    if not channel_binding:
        raise malformed("channel binding is not valid base64")
    nonce = check_nonce(expect(attributes, 1, "r"))
    if len(attributes) < 3 or attributes[-1][0] != "p":
        raise malformed("proof missing or not last")
    check_extensions(attributes[2:-1])
    proof = decode_key(attributes[-1][1], "proof")
    without_proof = text[: len(text) - len(attributes[-1][1]) - len(",p=")]
    return ClientFinal(channel_binding, nonce, proof, without_proof)


def parse_server_first(text: str) -> ServerFirst:
    """Parse an upstream's server-first message (limits on the values are the client's job)."""
    attributes = split_attributes(text)
    if attributes[0][0] == "m":
        raise malformed("mandatory extension not supported")
    nonce = check_nonce(expect(attributes, 0, "r"))
    salt = b64decode_strict(expect(attributes, 1, "s"))
    if not salt or len(salt) > MAX_SALT_LENGTH:
        raise malformed(f"salt is not base64 of 1 to {MAX_SALT_LENGTH} bytes")
    iterations = expect(attributes, 2, "i")
    if len(iterations) > MAX_ITERATIONS_DIGITS or not _ITERATIONS.fullmatch(iterations):
        raise malformed("iteration count is not a positive number")
    check_extensions(attributes[3:])
    return ServerFirst(text, nonce, salt, int(iterations))


def parse_server_final(text: str) -> ServerFinal:
    """Parse an upstream's server-final message: `v=` signature or `e=` error."""
    attributes = split_attributes(text)
    name, value = attributes[0]
    if name == "e":
        return ServerFinal(None, _sanitize_server_error(value))
    if name != "v":
        raise malformed("attribute 'v' expected at position 1")
    signature = decode_key(value, "server signature")
    check_extensions(attributes[1:])
    return ServerFinal(signature, None)


def _sanitize_server_error(value: str) -> str:
    """An `e=` value fit for a log line: printable ASCII, bounded."""
    clean = "".join(char if is_printable(char) else "?" for char in value)
    return clean[:MAX_SERVER_ERROR_LENGTH] or "?"


# --- channel binding (RFC 5929) ------------------------------------------------------------------


def tls_server_end_point(der_certificate: bytes) -> bytes | None:
    """The tls-server-end-point channel binding data for a DER certificate (RFC 5929 4.1).

    The certificate is hashed with its signature's hash algorithm, or SHA-256 when that is MD5 or
    SHA-1. None when the algorithm has no hash (Ed25519, Ed448): then -PLUS cannot be offered,
    as with Postgres. A certificate that cannot be parsed raises `ValueError` (our config's fault).
    """
    certificate = x509.load_der_x509_certificate(der_certificate)
    try:
        algorithm = certificate.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None
    if algorithm is None:
        return None
    if algorithm.name in ("md5", "sha1"):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(der_certificate)
    return digest.finalize()
