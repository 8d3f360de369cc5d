"""pgwarden's own temporary passwords are masked wherever they occur, however many are live.

`known_secrets.py` finds them with a loop of `in` (a few secrets, or a collection read afresh)
or with an index (a kept snapshot of many). Held here, each way: exact redactions (alone, inside
a longer run, repeated, overlapping, one inside another, non-ASCII, 5,000 live secrets) and
binary parameters; the spans masked are the union of every occurrence in the text (a property,
against a reference written below); the index's gram look-up finds exactly what `in` finds
(a property, and every offset of a secret in a run), and which way a text takes.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audit.known_secrets import FEW_SECRETS, _Index
from proxy.audit.redact import MASK, MIN_KNOWN_SECRET, Redactor
from tests.fixtures.examples import examples
from tests.fixtures.native_mode import pure_only

ALPHANUMERIC = string.ascii_letters + string.digits


def generated(count: int, seed: int = 21) -> tuple[str, ...]:
    """Secrets like pgwarden's own: 32 letters and digits (seeded: the same on every run)."""
    draw = random.Random(seed)
    return tuple("".join(draw.choices(ALPHANUMERIC, k=32)) for _ in range(count))


LIVE = generated(5_000)  # other grants' passwords, in none of the texts below
SECRET = "Zq8PzY1hQ0vL3kT9mWc2XbN7rAe5sD4f"
OTHER = "Tg5Kd0RmW2yLq8HcV1xNb7Fp3Js6Ze9A"

# How the redactor is given its known secrets: (name, how many live besides those under test,
# a snapshot kept between calls or a collection read afresh each time).
WAYS = [("few", 0, tuple), ("many kept", 5_000, tuple), ("many read afresh", 5_000, set)]


def redactor_for(way: str, *secrets: str) -> Redactor:
    _, live, kind = next(entry for entry in WAYS if entry[0] == way)
    known: Iterable[str] = kind((*LIVE[:live], *secrets))
    assert way != "few" or len(secrets) <= FEW_SECRETS
    return Redactor(lambda: known)


def reference(text: str, secrets: Iterable[str]) -> str:
    """The union of the spans of every occurrence of every secret (at every position, so
    overlapping ones too), each stretch of it one MASK."""
    masked = [False] * len(text)
    for secret in secrets:
        if len(secret) < MIN_KNOWN_SECRET:
            continue
        for start in range(len(text) - len(secret) + 1):
            if text.startswith(secret, start):
                masked[start : start + len(secret)] = [True] * len(secret)
    out = []
    for i, char in enumerate(text):
        if not masked[i]:
            out.append(char)
        elif i == 0 or not masked[i - 1]:
            out.append(MASK)
    return "".join(out)


RUN = "".join(random.Random(7).choices(ALPHANUMERIC, k=100_000))

# name: (secrets, text, redacted). None of the texts holds a word the pattern passes redact.
EXACT: dict[str, tuple[tuple[str, ...], str, str]] = {
    "alone": ((SECRET,), SECRET, MASK),
    "inside a longer run": ((SECRET,), f"x{SECRET}y", "x***y"),
    "at the start": ((SECRET,), f"{SECRET} = 1", "*** = 1"),
    "at the end": (
        (SECRET,),
        f"SELECT 1 FROM t WHERE k = {SECRET}",
        "SELECT 1 FROM t WHERE k = ***",
    ),
    "repeated": ((SECRET,), f"{SECRET}, '{SECRET}'", "***, '***'"),
    "adjacent: one stretch": ((SECRET,), f"{SECRET}{SECRET}", MASK),
    "two secrets": ((SECRET, OTHER), f"SELECT '{SECRET}', '{OTHER}'", "SELECT '***', '***'"),
    "two adjacent": ((SECRET, OTHER), f"SELECT '{OTHER}{SECRET}x'", "SELECT '***x'"),
    "overlapping": (("abcdefgh12", "12345678xy"), "'abcdefgh12345678xy!'", "'***!'"),
    "overlapping itself": (("abababababab",), "x abababababababab y", "x *** y"),
    "one inside another": (
        ("pgw-Secret-Long-1", "Secret-Long"),
        "a pgw-Secret-Long-1 b Secret-Long c",
        "a *** b *** c",
    ),
    "inner one first": (("Secret-Long", "pgw-Secret-Long-1"), "pgw-Secret-Long-1", MASK),
    "non-ASCII": (("pässwörd-123",), "SELECT 'pässwörd-123' AS ü", "SELECT '***' AS ü"),
    "with spaces": (("two words here",), "SELECT 'two words here!'", "SELECT '***!'"),
    "astral": (("\U0001f511 keys \U0001f511",), "k = '\U0001f511 keys \U0001f511'", "k = '***'"),
    "too short: ignored": (("short12",), "SELECT 'short12'", "SELECT 'short12'"),
    "a short one beside": ((SECRET, "short12"), f"short12 {SECRET}", "short12 ***"),
    "absent": ((SECRET,), "SELECT 1", "SELECT 1"),
    "all but one character": ((SECRET,), SECRET[:-1], SECRET[:-1]),
    "amid a 100 KB run": (
        (SECRET,),
        f"'{RUN[:50_000]}{SECRET}{RUN[50_000:]}'",
        f"'{RUN[:50_000]}***{RUN[50_000:]}'",
    ),
    "a 100 KB run without": ((SECRET,), f"'{RUN}'", f"'{RUN}'"),
}


@pytest.mark.parametrize("way", [name for name, _, _ in WAYS])
@pytest.mark.parametrize(("secrets", "text", "expected"), list(EXACT.values()), ids=list(EXACT))
def test_known_secrets_are_masked_exactly(
    way: str, secrets: tuple[str, ...], text: str, expected: str
) -> None:
    redactor = redactor_for(way, *secrets)
    assert redactor.redact(text) == expected == reference(text, secrets)
    assert redactor.redact(text) == expected  # again: from the memo, or the same index


def test_overlapping_secrets_leave_nothing_visible() -> None:
    """Replacing one secret after another used to leave the end of the second in view."""
    redactor = Redactor(lambda: ("abcdefgh12", "12345678xy"))
    assert redactor.redact("abcdefgh12345678xy") == MASK


def test_the_secret_hit_among_5000_live_ones_is_masked() -> None:
    live = (*LIVE, SECRET)
    redactor = Redactor(lambda: live)
    for hit in (LIVE[0], LIVE[2_500], LIVE[-1], SECRET):
        assert redactor.redact(f"SELECT * FROM t WHERE pw = '{hit}';") == (
            "SELECT * FROM t WHERE pw = '***';"
        )
        assert redactor.redact(hit) == MASK


def test_secrets_sharing_most_of_their_characters_are_each_masked() -> None:
    """Not generated passwords: their grams are shared by many secrets at once."""
    secrets = tuple(f"pgw-Known-secret-{n:03d}" for n in range(200))
    redactor = Redactor(lambda: secrets)
    for secret in secrets:
        for text in (f"x {secret} y", f"{secret}-{secret[:-1]}", f"ee{secret}"):
            assert redactor.redact(text) == reference(text, secrets), text
        assert redactor.contains_known_secret(b"\x00" + secret.encode())
    assert redactor.redact("pgw-Known-secret-200") == "pgw-Known-secret-200"


def test_a_secret_dropped_from_a_new_snapshot_is_no_longer_masked() -> None:
    snapshot = (*LIVE, SECRET)
    redactor = Redactor(lambda: snapshot)
    text = f"SELECT '{SECRET}' AS pw, 'padding to make this text too long for the memo'"
    assert redactor.redact(text).startswith("SELECT '***' AS pw")
    assert redactor.contains_known_secret(SECRET.encode())
    snapshot = LIVE
    assert redactor.redact(text) == text
    assert not redactor.contains_known_secret(SECRET.encode())


# -- bytes (binary parameters) -------------------------------------------------------------------

CONTAINS: dict[str, tuple[tuple[str, ...], bytes, bool]] = {
    "amid binary": ((SECRET,), b"\x00\x01" + SECRET.encode() + b"\xff", True),
    "alone": ((SECRET,), SECRET.encode(), True),
    "cut in two": ((SECRET,), SECRET[:-1].encode() + b"\x00" + SECRET[-1:].encode(), False),
    "zeros": ((SECRET,), b"\x00" * 64, False),
    "a 100 KB run without": ((SECRET,), RUN.encode(), False),
    "amid a 100 KB run": ((SECRET,), (RUN[:70_000] + SECRET + RUN[70_000:]).encode(), True),
    "non-ASCII as UTF-8": (("pässwörd-123",), "pässwörd-123".encode(), True),
    "non-ASCII as Latin-1": (("pässwörd-123",), "pässwörd-123".encode("latin-1"), False),
    "a lone surrogate": (
        ("\udc80abcdefgh",),
        b"x" + "\udc80abcdefgh".encode("utf-8", "surrogatepass"),
        True,
    ),
    "too short: ignored": (("short12",), b"short12", False),
}


@pytest.mark.parametrize("way", [name for name, _, _ in WAYS])
@pytest.mark.parametrize(
    ("secrets", "data", "expected"), list(CONTAINS.values()), ids=list(CONTAINS)
)
def test_binary_parameters_holding_a_known_secret_are_recognised(
    way: str, secrets: tuple[str, ...], data: bytes, expected: bool
) -> None:
    assert redactor_for(way, *secrets).contains_known_secret(data) is expected


# -- properties ----------------------------------------------------------------------------------

# Few characters, so that secrets overlap, contain each other and merge into longer runs; a
# non-ASCII one (two bytes in UTF-8) and a space; none of the words the pattern passes look for.
CHARACTERS = "ab1ä -"
SECRETS = st.text(CHARACTERS, min_size=MIN_KNOWN_SECRET - 2, max_size=14)


def many_secrets(draw_secrets: list[str], extra: int, seed: int) -> tuple[str, ...]:
    """The drawn secrets and `extra` more from the same characters, which the text may or may
    not hold by chance, in a shuffled order (seeded)."""
    draw = random.Random(seed)
    more = ["".join(draw.choices(CHARACTERS, k=draw.randint(8, 16))) for _ in range(extra)]
    secrets = [*draw_secrets, *more]
    draw.shuffle(secrets)
    return tuple(secrets)


@st.composite
def cases(draw: st.DrawFn) -> tuple[tuple[str, ...], str]:
    """Secrets (a few drawn, up to 200 more) and a text of some of them among filler."""
    chosen = draw(st.lists(SECRETS, min_size=1, max_size=6))
    extra = draw(st.sampled_from([0, 2, 8, 20, 60, 200]))
    secrets = many_secrets(chosen, extra, seed=draw(st.integers(0, 2**16)))
    pieces = draw(st.lists(st.sampled_from(chosen) | st.text(CHARACTERS, max_size=5), max_size=12))
    return secrets, "".join(pieces)


@settings(max_examples=examples(500), deadline=None)
@given(case=cases())
def test_redaction_masks_the_union_of_every_occurrence(case: tuple[tuple[str, ...], str]) -> None:
    secrets, text = case
    redacted = Redactor(lambda: secrets).redact(text)
    assert redacted == reference(text, secrets)
    assert not any(secret in redacted for secret in secrets if len(secret) >= MIN_KNOWN_SECRET)
    assert Redactor(lambda: set(secrets)).redact(text) == redacted  # read afresh: the loop


@settings(max_examples=examples(500), deadline=None)
@given(case=cases())
def test_the_index_finds_what_a_search_for_each_secret_finds(
    case: tuple[tuple[str, ...], str],
) -> None:
    """Its gram look-up on its own, whatever the cost would choose; and `contains`."""
    secrets, text = case
    usable = tuple(dict.fromkeys(s.encode() for s in secrets if len(s) >= MIN_KNOWN_SECRET))
    if not usable:
        return
    data = text.encode()
    present = sorted(secret for secret in usable if secret in data)
    assert sorted(_Index(usable).look_up(data)) == sorted(_Index(usable).found(data)) == present
    assert Redactor(lambda: secrets).contains_known_secret(data) is bool(present)


# -- the index's own edges -------------------------------------------------------------------------


@pytest.mark.parametrize("count", [FEW_SECRETS + 1, 5_000])
def test_the_index_finds_a_secret_wherever_it_lies_in_a_run(count: int) -> None:
    """At every offset from a run's start (two strides' worth and more), ending the run or not:
    the sampled windows never step over an occurrence."""
    secrets = tuple(secret.encode() for secret in LIVE[:count])
    index = _Index(secrets)
    hit = secrets[-1]
    for before in range(40):
        for tail in (b"", b"Q", b"Q9z", b" "):
            data = b"-" + RUN[:before].encode() + hit + tail + b"-"
            assert index.look_up(data) == [hit], (before, tail)
    assert index.look_up(b"-" + hit[:-1] + b"-" + hit[1:]) == []


class LookUps:
    """Counts the index's gram look-ups (its way), beside searches for each secret."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        look_up = _Index._look_up

        def counted(index: _Index, data: bytes, runs: list[tuple[int, int]]) -> list[bytes]:
            self.calls += 1
            return look_up(index, data, runs)

        monkeypatch.setattr(_Index, "_look_up", counted)


@pure_only("counts the calls of a method by patching it")
@pytest.mark.parametrize(
    ("count", "text", "looked_up"),
    [
        (5_000, f"SELECT '{SECRET}'", True),  # many secrets: the index's way
        (5_000, f"'{RUN}'", True),
        (20, f"SELECT '{SECRET}'", True),
        (20, f"'{RUN}'", False),  # a long run, a few dozen secrets: `in` for each is cheaper
        (5_000, "SELECT abalance FROM pgbench_accounts WHERE aid = 1;", False),  # no run at all
    ],
    ids=["many", "many, long run", "twenty", "twenty, long run", "no run"],
)
def test_the_cheaper_way_is_taken(
    monkeypatch: pytest.MonkeyPatch, count: int, text: str, looked_up: bool
) -> None:
    """Not a timing: the choice that the rough costs in `known_secrets.py` make, and that the
    result is the same either way."""
    lookups = LookUps(monkeypatch)
    secrets = (*LIVE[: count - 1], SECRET)
    assert count > FEW_SECRETS
    expected = text.replace(SECRET, MASK)
    assert Redactor(lambda: secrets).redact(text) == expected
    assert (lookups.calls > 0) is looked_up
