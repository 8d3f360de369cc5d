"""The redactor's fast paths change nothing but the speed.

`Redactor.redact` skips the pattern passes when no trigger word (`_MAYBE_SECRET`) is in the text,
and remembers its results for short strings, per identity of what `known_secrets()` returned.
Held here: the prefilter never skips a text that the full pattern pass would change (a property
over texts built from the patterns' own trigger fragments, in any case); a new set of known
secrets is applied to a string redacted before; the memo stays bounded; long strings, which are
not remembered, are redacted all the same.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.audit.redact import (
    MASK,
    MEMO_ENTRIES,
    MEMO_MAX_TEXT,
    MIN_KNOWN_SECRET,
    MIN_SECRET_TEXT,
    Redactor,
)
from tests.fixtures.examples import examples

HEX = "0123456789abcdef" * 2
FRAGMENTS = [
    "password", "PASSWORD", "PaSsWoRd", "pass", "word", "pa\u017fsword",  # long s ~ s
    "md5" + HEX, "MD5" + HEX.upper(), "md5", HEX[:16],
    "SCRAM-SHA-256$", "scram-sha-256$", "4096:c2FsdA==$c3RvcmVk:c2VydmVy",
    "://", "postgres", "user:pw@", ":", "@", "/", "h",
    "'", "''", '"', "$$", "$q$", "E'", "e'", "U&'", "\\", "\\'",
    "=", " = ", " ", "\n", "\t", "(", ")", ",", "--", "/*", "*/", "{", "}",
    "host=db ", "ALTER ROLE x ", "$1", "é", "\u2028", "\udc80",
]  # fmt: skip
TEXTS = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=3), max_size=14).map("".join)


def full_pass(text: str, secrets: Iterable[str] = ()) -> str:
    """What `redact` did before the fast paths: every pattern pass, then the known secrets."""
    text = Redactor()._redact_patterns(text)
    for secret in secrets:
        if len(secret) >= MIN_KNOWN_SECRET and secret in text:
            text = text.replace(secret, MASK)
    return text


@settings(max_examples=examples(2000), deadline=None)
@given(text=TEXTS)
@example(text="ALTER ROLE x PaSsWoRd 'hunter2'")
@example(text="SELECT 'Md5" + HEX.upper() + "'")
@example(text="x scram-sha-256$4096:abc")
@example(text='\'{"PASSWORD": "pw"}\'')
@example(text="conninfo PassWord='a b' x")
@example(text="db://u:pw@h")
def test_the_prefilter_never_skips_a_text_the_patterns_would_change(text: str) -> None:
    if len(text) < MIN_SECRET_TEXT:  # below that redact() returns the text at once, see below
        text += " " * (MIN_SECRET_TEXT - len(text))
    assert Redactor().redact(text) == full_pass(text)


@settings(max_examples=examples(300), deadline=None)
@given(text=TEXTS, filler=st.sampled_from(["", "x" * MEMO_MAX_TEXT]))
def test_redacting_twice_gives_the_same_result(text: str, filler: str) -> None:
    """The second call of a short text is served from the memo; a long one is never kept."""
    redactor = Redactor(lambda: ("pgw-Known-secret-1",))
    text = filler + text + " pgw-Known-secret-1"
    first = redactor.redact(text)
    assert redactor.redact(text) == first == full_pass(text, ["pgw-Known-secret-1"])


# -- the memo ------------------------------------------------------------------------------------


class Secrets:
    """`known_secrets` as the server's is: a new tuple whenever the set changes."""

    def __init__(self, *secrets: str) -> None:
        self.current: tuple[str, ...] = secrets

    def __call__(self) -> tuple[str, ...]:
        return self.current


def test_a_new_known_secret_is_masked_in_a_text_remembered_before() -> None:
    secrets = Secrets("pgw-first-Secret")
    redactor = Redactor(secrets)
    text = "SELECT 'pgw-second-Secret'"
    assert len(text) <= MEMO_MAX_TEXT
    assert redactor.redact(text) == text  # remembered, unchanged, under the first set
    secrets.current = (*secrets.current, "pgw-second-Secret")
    assert redactor.redact(text) == "SELECT '***'"
    secrets.current = ("pgw-first-Secret",)  # the second password's grant ended
    assert redactor.redact(text) == text
    assert redactor.redact("pgw-first-Secret") == MASK


def test_a_password_issued_later_is_masked_in_a_short_session_id() -> None:
    secrets = Secrets()
    redactor = Redactor(secrets)
    assert redactor.redact("abcdefgh12345678") == "abcdefgh12345678"
    secrets.current = ("abcdefgh12345678",)
    assert redactor.redact("abcdefgh12345678") == MASK


def test_the_memo_stays_bounded() -> None:
    redactor = Redactor(Secrets("pgw-Known-secret-1"))
    for n in range(MEMO_ENTRIES + 500):
        assert redactor.redact(f"short text number {n:08d}") == f"short text number {n:08d}"
        assert len(redactor._memo[1]) <= MEMO_ENTRIES
    assert redactor.redact("pw pgw-Known-secret-1") == f"pw {MASK}"
    assert redactor.redact("ALTER ROLE a PASSWORD 'x1x2x3'") == "ALTER ROLE a PASSWORD '***'"
    assert len(redactor._memo[1]) <= MEMO_ENTRIES


def test_long_texts_are_redacted_and_not_remembered() -> None:
    redactor = Redactor(Secrets("pgw-Known-secret-1"))
    padding = "SELECT 1 /* " + "x" * MEMO_MAX_TEXT + " */; "
    texts = {
        padding + "ALTER ROLE a PASSWORD 'hunter2'": padding + "ALTER ROLE a PASSWORD '***'",
        padding + "SELECT 'pgw-Known-secret-1'": padding + "SELECT '***'",
        padding + "SELECT 'md5" + HEX + "'": padding + "SELECT '***'",
        padding + "postgres://u:pw@h/db": padding + "postgres://u:***@h/db",
    }
    for text, expected in texts.items():
        assert len(text) > MEMO_MAX_TEXT
        assert redactor.redact(text) == expected
        assert redactor.redact(text) == expected
    assert redactor._memo[1] == {}


@pytest.mark.parametrize("length", [MEMO_MAX_TEXT - 1, MEMO_MAX_TEXT, MEMO_MAX_TEXT + 1])
def test_texts_at_the_memo_limit_are_redacted(length: int) -> None:
    secrets = Secrets()
    redactor = Redactor(secrets)
    tail = " PASSWORD 'hunter2'"
    text = "x" * (length - len(tail) - 1) + " pgw-Later-secret" + tail
    text = text[-length:]
    assert len(text) == length
    assert redactor.redact(text).endswith(" PASSWORD '***'")
    secrets.current = ("pgw-Later-secret",)
    assert "pgw-Later-secret" not in redactor.redact(text)


# -- two holes these tests found, now closed ---------------------------------------------------


@pytest.mark.parametrize("text", ["a://:x@", "s://:9@"])
def test_a_uri_password_in_a_very_short_text_is_redacted(text: str) -> None:
    """The shortest text any pattern can match (`a://:x@`, 7 characters) is not skipped as
    too short to hold a secret."""
    assert len(text) >= MIN_SECRET_TEXT
    assert Redactor().redact(text) == full_pass(text) == text.replace(text[4:-1], ":***")


def test_a_kept_mutable_set_of_known_secrets_is_read_afresh() -> None:
    """The memo is kept per immutable snapshot of the known secrets: a set that gains a password
    in place is read again at each redaction, never answered from the memo."""
    kept: set[str] = set()
    redactor = Redactor(lambda: kept)
    text = "SELECT 'pgw-Later-secret'"
    assert redactor.redact(text) == text
    kept.add("pgw-Later-secret")
    assert redactor.redact(text) == "SELECT '***'"
