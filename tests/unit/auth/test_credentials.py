"""Verifiers in Postgres's format, generated passwords, PBKDF2 and its cache (SECURITY row 18)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.auth import (
    DEFAULT_ITERATIONS,
    SaltedPasswordCache,
    ScramVerifier,
    VerifierFormatError,
    generate_password,
    make_verifier,
    salted_password,
)
from tests.fixtures.examples import examples
from tests.unit.auth.helpers import RFC_ITERATIONS, RFC_PASSWORD, RFC_SALT

# Computed from the RFC 7677 example with the formulas of RFC 5802, independently of our code.
_SALTED = hashlib.pbkdf2_hmac("sha256", RFC_PASSWORD.encode(), RFC_SALT, RFC_ITERATIONS)
_CLIENT_KEY = hmac.digest(_SALTED, b"Client Key", "sha256")
RFC_VERIFIER = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==${}:{}".format(
    base64.b64encode(hashlib.sha256(_CLIENT_KEY).digest()).decode(),
    base64.b64encode(hmac.digest(_SALTED, b"Server Key", "sha256")).decode(),
)


def test_make_verifier_matches_the_rfc_formulas_in_postgres_format() -> None:
    verifier = make_verifier(RFC_PASSWORD, iterations=RFC_ITERATIONS, salt=RFC_SALT)
    assert verifier.to_postgres() == RFC_VERIFIER


def test_verifier_round_trips_through_postgres_format() -> None:
    verifier = ScramVerifier.parse(RFC_VERIFIER)
    assert (verifier.iterations, verifier.salt) == (4096, RFC_SALT)
    assert verifier.to_postgres() == RFC_VERIFIER
    assert ScramVerifier.parse(verifier.to_postgres()) == verifier


@settings(max_examples=examples(30), deadline=None)
@given(
    iterations=st.integers(1, 2**31 - 1),
    salt=st.binary(min_size=1, max_size=64),
    stored=st.binary(min_size=32, max_size=32),
    server=st.binary(min_size=32, max_size=32),
)
def test_any_valid_verifier_round_trips(
    iterations: int, salt: bytes, stored: bytes, server: bytes
) -> None:
    verifier = ScramVerifier(iterations, salt, stored, server)
    assert ScramVerifier.parse(verifier.to_postgres()) == verifier


def test_make_verifier_defaults_like_postgres() -> None:
    first, second = make_verifier("same password"), make_verifier("same password")
    assert first.iterations == DEFAULT_ITERATIONS == 4096
    assert len(first.salt) == 16
    assert first.salt != second.salt
    assert first.stored_key != second.stored_key


def test_verifier_repr_hides_the_secrets() -> None:
    verifier = ScramVerifier.parse(RFC_VERIFIER)
    assert repr(verifier) == "ScramVerifier(iterations=4096)"


_, _SALT_B64, _KEYS = RFC_VERIFIER.split("$")[0], *RFC_VERIFIER.split("$")[1:]
_STORED, _SERVER = _KEYS.split(":")
_GOOD_TAIL = RFC_VERIFIER.removeprefix("SCRAM-SHA-256$4096")
BAD_VERIFIERS = {
    "empty": "",
    "plaintext": "pencil",
    "md5": "md5" + "0" * 32,
    "lower-case prefix": RFC_VERIFIER.replace("SCRAM-SHA-256", "scram-sha-256"),
    "iterations 0": "SCRAM-SHA-256$0" + _GOOD_TAIL,
    "iterations negative": "SCRAM-SHA-256$-1" + _GOOD_TAIL,
    "iterations with leading zero": "SCRAM-SHA-256$04096" + _GOOD_TAIL,
    "iterations above int": "SCRAM-SHA-256$2147483648" + _GOOD_TAIL,
    "iterations not a number": "SCRAM-SHA-256$many" + _GOOD_TAIL,
    "missing server key": RFC_VERIFIER.rsplit(":", 1)[0],
    "missing keys": RFC_VERIFIER.split("$")[0] + "$" + RFC_VERIFIER.split("$")[1],
    "salt not base64": RFC_VERIFIER.replace(_SALT_B64.split(":")[1], "!!!!"),
    "salt without padding": RFC_VERIFIER.replace("gQ==", "gQ"),
    "empty salt": RFC_VERIFIER.replace(_SALT_B64.split(":")[1], ""),
    "short stored key": RFC_VERIFIER.replace(_STORED, base64.b64encode(bytes(31)).decode()),
    "long server key": RFC_VERIFIER.replace(_SERVER, base64.b64encode(bytes(33)).decode()),
    "trailing newline": RFC_VERIFIER + "\n",
    "leading space": " " + RFC_VERIFIER,
    "extra field": RFC_VERIFIER + ":AAAA",
    "huge": RFC_VERIFIER + "A" * 10_000,
}


@pytest.mark.parametrize("text", BAD_VERIFIERS.values(), ids=BAD_VERIFIERS)
def test_malformed_verifiers_are_rejected(text: str) -> None:
    with pytest.raises(VerifierFormatError) as caught:
        ScramVerifier.parse(text)
    assert caught.value.message == "invalid SCRAM verifier"
    assert caught.value.detail


def test_verifier_fields_are_checked_on_construction() -> None:
    with pytest.raises(VerifierFormatError):
        ScramVerifier(4096, b"", bytes(32), bytes(32))
    with pytest.raises(VerifierFormatError):
        ScramVerifier(0, b"salt", bytes(32), bytes(32))


def test_make_verifier_applies_saslprep_like_postgres() -> None:
    salt = b"0123456789abcdef"
    assert make_verifier("I\u00adX", salt=salt, iterations=1) == make_verifier(
        "IX", salt=salt, iterations=1
    )
    # U+0221 is unassigned in Unicode 3.2: SASLprep refuses it, Postgres hashes the raw bytes.
    raw = hashlib.pbkdf2_hmac("sha256", "a\u0221".encode(), salt, 1)
    expected_stored = hashlib.sha256(hmac.digest(raw, b"Client Key", "sha256")).digest()
    assert make_verifier("a\u0221", salt=salt, iterations=1).stored_key == expected_stored


def test_salted_password_is_pbkdf2_of_the_prepared_password() -> None:
    assert salted_password(RFC_PASSWORD, RFC_SALT, RFC_ITERATIONS) == _SALTED
    assert salted_password(RFC_PASSWORD.encode(), RFC_SALT, RFC_ITERATIONS) == _SALTED
    with pytest.raises(ValueError, match="iteration count"):
        salted_password("x", RFC_SALT, 0)


def test_generated_passwords_are_long_random_and_conninfo_safe() -> None:
    passwords = {generate_password() for _ in range(200)}
    assert len(passwords) == 200
    for password in passwords:
        assert len(password) == 32
        assert set(password) <= set(string.ascii_letters + string.digits)


def test_salted_password_cache_is_a_bounded_lru() -> None:
    cache = SaltedPasswordCache(max_entries=2)
    cache.put(b"p", b"s1", 1, b"one")
    cache.put(b"p", b"s2", 1, b"two")
    assert cache.get(b"p", b"s1", 1) == b"one"  # now most recently used
    cache.put(b"p", b"s3", 1, b"three")
    assert cache.get(b"p", b"s2", 1) is None
    assert cache.get(b"p", b"s1", 1) == b"one"
    assert cache.get(b"p", b"s1", 2) is None
    assert len(cache) == 2
    with pytest.raises(ValueError, match="max_entries"):
        SaltedPasswordCache(max_entries=0)
