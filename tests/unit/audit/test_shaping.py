"""`Shaper`: statement text shaped once per distinct message, until the known secrets change;
bounded caches; values as ASCII JSON whichever encoder writes them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audit.redact import Redactor
from proxy.audit.shaping import (
    ENTRY_OVERHEAD,
    MAX_CACHED_MESSAGE,
    Lru,
    QueryLimits,
    Shaper,
    Shown,
    json_list,
)
from proxy.wire import Parse, Query, encode
from tests.fixtures.examples import examples


class CountingRedactor(Redactor):
    """Counts redactions of long strings (statement texts, not names)."""

    def __init__(self, secrets: list[tuple[str, ...]]) -> None:
        super().__init__(lambda: secrets[-1])
        self.texts = 0

    def redact(self, text: str) -> str:
        self.texts += len(text) > 12
        return super().redact(text)


def payload(message: Query | Parse) -> bytes:
    return bytes(encode(message)[5:])


def test_a_repeated_statement_is_shaped_once() -> None:
    redactor = CountingRedactor([()])
    shaper = Shaper(redactor)
    parse = payload(Parse("s1", "SELECT * FROM t WHERE id = $1", (23,)))
    query = payload(Query("SELECT * FROM t WHERE id = 7"))
    first = shaper.statement(parse)
    assert first.step == '{"parse":"s1","text":"SELECT * FROM t WHERE id = $1","param_types":[23]}'
    assert shaper.query(query) == '{"query":"SELECT * FROM t WHERE id = 7"}'
    assert redactor.texts == 2
    for _ in range(3):
        assert shaper.statement(parse) is first
        assert shaper.query(query) == '{"query":"SELECT * FROM t WHERE id = 7"}'
    assert redactor.texts == 2


def test_a_new_known_secret_empties_the_cache() -> None:
    secrets: list[tuple[str, ...]] = [()]
    shaper = Shaper(CountingRedactor(secrets))
    query = payload(Query("SELECT 'pgw-Tmp-7Hq2xLz9Rw4K'"))
    assert "7Hq2" in shaper.query(query)  # not a secret yet
    secrets.append(("pgw-Tmp-7Hq2xLz9Rw4K",))  # issued now: the snapshot changes
    assert shaper.query(query) == '{"query":"SELECT \'***\'"}'


def test_known_secrets_read_afresh_each_time_are_never_cached() -> None:
    secrets = ["pgw-Tmp-7Hq2xLz9Rw4K"]  # a list: not a snapshot, so nothing may be kept
    redactor = Redactor(lambda: secrets)
    shaper = Shaper(redactor)
    query = payload(Query("SELECT 'pgw-Tmp-Other-Secret'"))
    assert "Other" in shaper.query(query)
    secrets.append("pgw-Tmp-Other-Secret")
    assert "Other" not in shaper.query(query)


def test_the_cache_keeps_the_most_recently_used_within_its_bytes() -> None:
    lru: Lru[str] = Lru(max_bytes=5 * (20 + ENTRY_OVERHEAD))
    for n in range(5):
        lru.put(b"key%d" % n, "v" * 16, 16)  # 20 bytes each, and the overhead: all five fit
    assert lru.get(b"key0") == "v" * 16  # used: now the most recent
    lru.put(b"key5", "v" * 16, 16)  # over the budget: the least recently used goes
    assert lru.get(b"key1") is None
    assert lru.get(b"key0") is not None
    assert lru.held <= 5 * (20 + ENTRY_OVERHEAD)
    lru.put(b"x" * (MAX_CACHED_MESSAGE + 1), "v", 1)  # too long to keep
    assert len(lru.entries) == 5


def test_a_long_statement_is_cut_and_says_its_size() -> None:
    shaper = Shaper(Redactor(), QueryLimits(max_text_bytes=10))
    assert shaper.query(payload(Query("SELECT 1234567890"))) == (
        '{"query":"SELECT 123","bytes":17,"truncated":true}'
    )


SHOWN = (
    st.none()
    | st.text()
    | st.builds(lambda t: {"text": t, "bytes": 9, "truncated": True}, st.text())
)


@settings(max_examples=examples(300))
@given(st.lists(SHOWN, max_size=5))
def test_values_are_ascii_json_whichever_encoder_writes_them(values: list[Shown]) -> None:
    """orjson writes UTF-8 and refuses lone surrogates: those lists go to the ASCII encoder."""
    encoded = json_list(values)
    assert encoded.isascii()
    assert "\x7f" not in encoded
    assert json.loads(encoded) == values


@pytest.mark.parametrize("value", ["caf\u00e9", "del\x7f", "lone \udcff", "bidi \u202e"])
def test_values_orjson_would_not_write_as_ascii_are_escaped(value: str) -> None:
    assert json_list([value]) == json.dumps([value])
