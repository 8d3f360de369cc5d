"""People's text reaches every page as text: markup escaped, bidi and invisible characters
spelled out (SECURITY.md row 47).

A reason, an approval's comment, a denial's reason and a revocation's reason carrying
`<script>`, an attribute breakout with an event handler, bidi overrides and isolates (U+202E,
U+2066) and a zero-width space: every page that shows them holds the escaped text, never the
raw markup nor the raw characters.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.unit.web.harness import Answer, ConsoleHarness

HOSTILE = (
    '<script>alert(1)</script> "><img src=x onerror=alert(2)> '
    "\u202eevil\u2066iso\u2069 zero\u200bwidth"
)
RAW = ("<script>alert", "<img", "\u202e", "\u2066", "\u2069", "\u200b")
ESCAPED = (
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;",
    "&lt;U+202E&gt;evil&lt;U+2066&gt;iso&lt;U+2069&gt;",
    "zero&lt;U+200B&gt;width",
)


def assert_harmless(answer: Answer, *, shows: int) -> None:
    """No raw markup or character of HOSTILE's; its escaped form `shows` times (at least)."""
    assert answer.status == 200, answer.body[:500]
    for raw in RAW:
        assert raw not in answer.body
    for escaped in ESCAPED:
        assert answer.body.count(escaped) >= shows, (escaped, answer.body)


@pytest.fixture
def hostile(console: ConsoleHarness) -> dict[str, str]:
    """Requests whose every text is HOSTILE: one pending with a comment, one denied, one
    revoked; made through the console's own forms."""
    alice, carol = console.client("alice"), console.client("carol")
    ids = {}
    for name in ("pending", "denied", "revoked"):
        alice.get("/console/new")
        form = {"scope": "orders/read-write", "duration": "30m", "reason": HOSTILE}
        created = alice.post("/console/new", form)
        assert created.status == 303, created.body[:500]
        ids[name] = created.location.split("/")[-1].split("?")[0]
        carol.get(f"/console/requests/{ids[name]}")
        assert (
            carol.post(f"/console/requests/{ids[name]}/approve", {"comment": HOSTILE}).status == 303
        )
    dave = console.client("dave")
    dave.get("/console/")
    assert dave.post(f"/console/requests/{ids['denied']}/deny", {"reason": HOSTILE}).status == 303
    assert dave.post(f"/console/requests/{ids['revoked']}/approve").status == 303
    assert (
        dave.post(f"/console/requests/{ids['revoked']}/revoke", {"reason": HOSTILE}).status == 303
    )
    return ids


def test_the_inbox_shows_a_hostile_reason_as_text(
    console: ConsoleHarness, hostile: dict[str, str]
) -> None:
    inbox = console.client("dave").get("/console/")
    assert hostile["pending"] in inbox.body
    assert_harmless(inbox, shows=1)


def test_request_pages_show_every_hostile_text_as_text(
    console: ConsoleHarness, hostile: dict[str, str]
) -> None:
    # The reason, the comment, and each again in the history; a closing reason twice more.
    shows = {"pending": 4, "denied": 6, "revoked": 6}
    for user in ("alice", "carol"):
        browser = console.client(user)
        for which, rid in hostile.items():
            assert_harmless(browser.get(f"/console/requests/{rid}"), shows=shows[which])


def test_my_requests_and_the_request_form_show_hostile_text_as_text(
    console: ConsoleHarness, hostile: dict[str, str]
) -> None:
    alice = console.client("alice")
    mine = alice.get("/console/mine")
    assert all(rid in mine.body for rid in hostile.values())
    assert_harmless(mine, shows=0)
    prefilled = alice.get("/console/new?target=orders&access_level=read-only&reason=" + _q(HOSTILE))
    assert_harmless(prefilled, shows=1)  # the reason is put back in the form, as text


def test_a_refused_form_puts_hostile_text_back_as_text(console: ConsoleHarness) -> None:
    alice = console.client("alice")
    alice.get("/console/new")
    form = {"scope": "orders/read-only", "duration": "forever", "reason": HOSTILE}
    answer = alice.post("/console/new", form)
    assert answer.status == 400
    answer.status = 200  # the page, as assert_harmless reads it
    assert_harmless(answer, shows=1)


def test_a_hostile_why_in_the_sign_in_url_is_text(console: ConsoleHarness) -> None:
    page = console.client().get("/console/signin?why=" + _q(HOSTILE))
    assert_harmless(page, shows=1)


def _q(text: str) -> str:
    return quote(text, safe="")
