"""Postgres MD5 password authentication, client side only: for upstreams that still ask for it.

When an upstream sends AuthenticationMD5Password with a 4-byte salt, the PasswordMessage carries

    "md5" + hex(md5(hex(md5(password + username)) + salt))

(the wire codec adds the terminating NUL). pgwarden never asks *its* clients for MD5: they use
SCRAM-SHA-256. MD5 is weak (the stored hash is password-equivalent); prefer SCRAM upstream too.
"""

from __future__ import annotations

import hashlib

from proxy.auth.scram_messages import UpstreamAuthError

MD5_SALT_LENGTH = 4  # AuthenticationMD5Password always carries exactly 4 salt bytes


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def md5_password_hash(username: str | bytes, password: str | bytes) -> str:
    """Postgres's stored MD5 form of a password: "md5" + hex(md5(password + username))."""
    return "md5" + _md5_hex(_as_bytes(password) + _as_bytes(username))


def md5_password_response(username: str | bytes, password: str | bytes, salt: bytes) -> bytes:
    """The PasswordMessage payload (without the NUL) answering AuthenticationMD5Password."""
    if len(salt) != MD5_SALT_LENGTH:
        raise UpstreamAuthError(f"upstream MD5 salt is not {MD5_SALT_LENGTH} bytes")
    inner = md5_password_hash(username, password)[len("md5") :]
    return b"md5" + _md5_hex(inner.encode("ascii") + salt).encode("ascii")
