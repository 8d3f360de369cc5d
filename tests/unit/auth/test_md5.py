"""The MD5 password response for upstreams that still ask for it."""

from __future__ import annotations

import hashlib

import pytest

from proxy.auth import UpstreamAuthError, md5_password_hash, md5_password_response


def test_md5_response_follows_the_documented_formula() -> None:
    salt = b"\x01\x02\x03\x04"
    inner = hashlib.md5(b"secret" + b"alice").hexdigest()
    expected = b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()
    assert md5_password_response("alice", "secret", salt) == expected
    assert md5_password_response(b"alice", b"secret", salt) == expected


def test_md5_fixed_vector() -> None:
    assert md5_password_hash("postgres", "postgres") == "md53175bce1d3201d16594cebf9d7eb3f9d"
    assert (
        md5_password_response("postgres", "postgres", b"\xde\xad\xbe\xef")
        == b"md5"
        + hashlib.md5(b"3175bce1d3201d16594cebf9d7eb3f9d\xde\xad\xbe\xef").hexdigest().encode()
    )


@pytest.mark.parametrize("salt", [b"", b"abc", b"abcde"])
def test_md5_salt_must_be_four_bytes(salt: bytes) -> None:
    with pytest.raises(UpstreamAuthError):
        md5_password_response("alice", "secret", salt)
