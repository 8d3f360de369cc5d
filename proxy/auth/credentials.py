"""Temporary credentials: random passwords, and the SCRAM verifiers that are all we keep of them.

A verifier is Postgres's stored form of a SCRAM-SHA-256 password,

    SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>

so `ALTER ROLE x PASSWORD '<verifier>'` stores ours as it is, and one that Postgres made parses
here. It lets a server check a proof but not recover the password (SECURITY.md row 18).

Making a verifier or a client proof needs the *salted password*, PBKDF2-HMAC-SHA256 over the
SASLprep'd password: the one expensive step of SCRAM (thousands of HMACs). `salted_password` is
synchronous; the session layer runs it in a thread executor, never on the event loop, and may keep
results in a `SaltedPasswordCache` so that repeated logins to the same upstream pay it once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from proxy.auth.saslprep import prepare_password
from proxy.auth.scram_messages import (
    KEY_LENGTH,
    MAX_SALT_LENGTH,
    AuthError,
    b64decode_strict,
    b64encode,
    client_key,
    server_key,
    sha256,
)

DEFAULT_ITERATIONS = 4096  # Postgres's default scram_iterations
SALT_LENGTH = 16  # Postgres's SCRAM_DEFAULT_SALT_LEN
MAX_ITERATIONS = 2**31 - 1  # Postgres keeps the count in a signed int
# Our passwords: 32 characters from 62 symbols = 190 bits of entropy, and only [A-Za-z0-9], so
# they need no quoting in a URL, a conninfo string or a shell, and SASLprep leaves them unchanged.
GENERATED_PASSWORD_LENGTH = 32
PASSWORD_ALPHABET = string.ascii_letters + string.digits
# A verifier with a 64-byte salt is ~200 characters; longer input is refused before matching.
MAX_VERIFIER_LENGTH = 512
# Distinct (password, salt, iterations) triples remembered: one per upstream role is typical.
DEFAULT_CACHE_ENTRIES = 64

_VERIFIER = re.compile(
    r"SCRAM-SHA-256\$([1-9][0-9]{0,9}):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)"
)


class VerifierFormatError(AuthError):
    """A stored verifier is not in Postgres's SCRAM-SHA-256 format (an internal fault)."""

    sqlstate = "XX000"

    def __init__(self, reason: str) -> None:
        super().__init__("invalid SCRAM verifier", detail=reason)


@dataclass(frozen=True)
class ScramVerifier:
    """What a server needs to check SCRAM-SHA-256 logins; the secrets stay out of `repr`."""

    iterations: int
    salt: bytes = field(repr=False)
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.iterations <= MAX_ITERATIONS:
            raise VerifierFormatError(f"iteration count out of range 1..{MAX_ITERATIONS}")
        if not 1 <= len(self.salt) <= MAX_SALT_LENGTH:
            raise VerifierFormatError(f"salt is not 1 to {MAX_SALT_LENGTH} bytes")
        if len(self.stored_key) != KEY_LENGTH or len(self.server_key) != KEY_LENGTH:
            raise VerifierFormatError(f"keys are not {KEY_LENGTH} bytes")

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """Parse Postgres's format strictly (canonical base64, exact lengths, no whitespace)."""
        if len(text) > MAX_VERIFIER_LENGTH:
            raise VerifierFormatError("too long")
        match = _VERIFIER.fullmatch(text)
        if match is None:
            raise VerifierFormatError("not SCRAM-SHA-256$<iterations>:<salt>$<stored>:<server>")
        iterations, *encoded = match.groups()
        salt, stored_key, server_key_ = (b64decode_strict(value) for value in encoded)
        if salt is None or stored_key is None or server_key_ is None:
            raise VerifierFormatError("invalid base64")
        return cls(int(iterations), salt, stored_key, server_key_)

    def to_postgres(self) -> str:
        """The text Postgres stores in `pg_authid.rolpassword` for this verifier."""
        return (
            f"SCRAM-SHA-256${self.iterations}:{b64encode(self.salt)}"
            f"${b64encode(self.stored_key)}:{b64encode(self.server_key)}"
        )


def salted_password(password: str | bytes, salt: bytes, iterations: int) -> bytes:
    """SaltedPassword = PBKDF2-HMAC-SHA256(SASLprep(password), salt, iterations). Expensive."""
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iteration count out of range 1..{MAX_ITERATIONS}")
    return hashlib.pbkdf2_hmac("sha256", prepare_password(password), salt, iterations)


def verifier_from_salted_password(salted: bytes, salt: bytes, iterations: int) -> ScramVerifier:
    """StoredKey = H(HMAC(salted, "Client Key")), ServerKey = HMAC(salted, "Server Key")."""
    return ScramVerifier(iterations, salt, sha256(client_key(salted)), server_key(salted))


def make_verifier(
    password: str | bytes, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> ScramVerifier:
    """A verifier for `password`, with a fresh 16-byte random salt unless one is given."""
    salt = secrets.token_bytes(SALT_LENGTH) if salt is None else salt
    return verifier_from_salted_password(
        salted_password(password, salt, iterations), salt, iterations
    )


def generate_password() -> str:
    """A fresh temporary password: 32 random alphanumerics (~190 bits)."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(GENERATED_PASSWORD_LENGTH))


class SaltedPasswordCache:
    """A small thread-safe LRU of salted passwords, keyed by (password, salt, iterations).

    It holds password-equivalent secrets (a salted password logs in to that server), so keep it
    in memory only, and only for passwords this process already holds.
    """

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[bytes, bytes, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, password: bytes, salt: bytes, iterations: int) -> bytes | None:
        key = (password, salt, iterations)
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, password: bytes, salt: bytes, iterations: int, salted: bytes) -> None:
        with self._lock:
            self._entries[(password, salt, iterations)] = salted
            self._entries.move_to_end((password, salt, iterations))
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
