"""SASLprep as Postgres applies it (RFC 4013 section 3 examples, and Postgres's deviations)."""

from __future__ import annotations

import pytest

from proxy.auth import prepare_password, saslprep
from proxy.auth.saslprep import SaslPrepError

RFC_4013_EXAMPLES = {
    "soft hyphen mapped to nothing": ("I\u00adX", "IX"),
    "no transformation": ("user", "user"),
    "case preserved": ("USER", "USER"),
    "NFKC: feminine ordinal": ("\u00aa", "a"),
    "NFKC: roman numeral nine": ("\u2168", "IX"),
    "non-ASCII space becomes a space": ("a\u00a0b\u3000c", "a b c"),
    "right-to-left string": ("\u0627\u0031\u0628", "\u0627\u0031\u0628"),
}


@pytest.mark.parametrize(("text", "expected"), RFC_4013_EXAMPLES.values(), ids=RFC_4013_EXAMPLES)
def test_rfc_4013_examples(text: str, expected: str) -> None:
    assert saslprep(text) == expected


PROHIBITED = {
    "bidi: RandALCat not at the end (RFC example)": "\u0627\u0031",
    "bidi: RandALCat mixed with LCat": "\u0627a\u0628",
    "non-ASCII control character": "a\u0080",
    "private use": "a\ue000",
    "unassigned in Unicode 3.2": "a\u0221",
    "empty after mapping": "\u00ad\u034f",
    "surrogate code point": "a\ud800",
}


@pytest.mark.parametrize("text", PROHIBITED.values(), ids=PROHIBITED)
def test_prohibited_input_is_refused(text: str) -> None:
    with pytest.raises(SaslPrepError):
        saslprep(text)


def test_pure_ascii_is_returned_unchanged_as_postgres_does() -> None:
    # RFC 4013 forbids U+0007, but Postgres's pg_saslprep returns pure-ASCII input untouched.
    assert saslprep("bell\x07") == "bell\x07"


def test_prepare_password_falls_back_to_the_raw_bytes_like_postgres() -> None:
    assert prepare_password("I\u00adX") == b"IX"
    assert prepare_password("I\u00adX".encode()) == b"IX"
    assert prepare_password("a\u0221") == "a\u0221".encode()
    assert prepare_password(b"\xff\xfe latin-1?") == b"\xff\xfe latin-1?"
