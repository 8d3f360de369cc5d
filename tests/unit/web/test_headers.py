"""Every console answer carries the security headers, and no page has inline script (row 47).

Pages, error pages, refusals, redirects, the JSON of `/console/changes`, static files and
paths no route matches: a strict Content-Security-Policy (no 'unsafe-inline' or 'unsafe-eval',
no framing), `X-Frame-Options: DENY`, `Cache-Control: no-store` and `nosniff`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.unit.web.harness import Answer, ConsoleHarness

Visit = Callable[[ConsoleHarness], Answer]


def _signed(path: str) -> Visit:
    return lambda c: c.client("carol").get(path)


def _anonymous(path: str) -> Visit:
    return lambda c: c.client().get(path)


def _refused_form(c: ConsoleHarness) -> Answer:
    return c.client("carol").post("/console/signout", csrf=None)


def _form_redirect(c: ConsoleHarness) -> Answer:
    browser = c.client("carol")
    browser.get("/console/")
    return browser.post("/console/signout")


ANSWERS: dict[str, tuple[Visit, int | None]] = {
    "inbox": (_signed("/console/"), 200),
    "request page": (lambda c: c.client("carol").get(f"/console/requests/{c.pending()}"), 200),
    "sessions": (_signed("/console/sessions"), 200),
    "new request form": (_signed("/console/new"), 200),
    "changes (JSON)": (_signed("/console/changes"), 200),
    "error page": (_signed("/console/requests/ffff"), 404),
    "form refused (CSRF)": (_refused_form, 403),
    "redirect after a form": (_form_redirect, 303),
    "sign-in page": (_anonymous("/console/signin"), 200),
    "redirect to sign in": (_anonymous("/console/mine"), 303),
    "root redirect": (_anonymous("/"), 303),
    "stylesheet": (_anonymous("/console/static/console.css"), 200),
    "script": (_anonymous("/console/static/console.js"), 200),
    "missing static file": (_anonymous("/console/static/nope.js"), 404),
    "path no route matches": (_signed("/console/nowhere"), None),
}


@pytest.mark.parametrize("name", ANSWERS)
def test_every_console_answer_carries_the_security_headers(
    console: ConsoleHarness, name: str
) -> None:
    visit, status = ANSWERS[name]
    answer = visit(console)
    if status is not None:
        assert answer.status == status, answer.body[:500]
    csp = answer.header("content-security-policy") or ""
    for directive in ("default-src 'none'", "script-src 'self'", "frame-ancestors 'none'",
                      "form-action 'self'", "base-uri 'none'"):  # fmt: skip
        assert directive in csp, (name, csp)
    assert "unsafe" not in csp
    assert answer.header("x-frame-options") == "DENY"
    assert answer.header("cache-control") == "no-store"
    assert answer.header("x-content-type-options") == "nosniff"


INLINE = {
    "inline script": re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I),
    "event handler attribute": re.compile(r"<[^>]+\son[a-z]+\s*=", re.I),
    "inline style": re.compile(r"<style|\sstyle\s*=", re.I),
    "javascript: URL": re.compile(r"javascript:", re.I),
}


def test_no_page_has_inline_script_or_style(console: ConsoleHarness) -> None:
    """What the CSP would block anyway is not there to be blocked (the pages work under it)."""
    rid = console.api.active_request("alice")
    pending = console.pending("bob")
    alice, carol = console.client("alice"), console.client("carol")
    alice.get(f"/console/requests/{rid}")
    pages = {
        "credential": alice.post(f"/console/requests/{rid}/credential"),
        "signin": console.client().get("/console/signin"),
        **{path: carol.get(path) for path in ("/console/", f"/console/requests/{pending}",
                                              "/console/sessions", "/console/requests/ff")},
        **{path: alice.get(path) for path in ("/console/mine", "/console/new")},
    }  # fmt: skip
    for page, answer in pages.items():
        assert answer.status in (200, 404), (page, answer.body[:300])
        for what, pattern in INLINE.items():
            assert pattern.search(answer.body) is None, f"{what} on {page}"
