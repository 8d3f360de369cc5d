"""CSRF on every console form, sign-in included (SECURITY.md row 47).

A POST whose token is missing, forged, another session's, or that comes from another site is
refused with a 403 page before anything is read or done: the request stays as it was, no approval
is stored, and the audit log holds no record of one. The sign-in forms refuse the same way before
a session exists (no login CSRF: nobody can sign a victim in to the attacker's account).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.unit.web.harness import Client, ConsoleHarness

EVIL = {"Origin": "http://evil.example"}
FORGED = "A" * 43  # the length of a real token


@dataclass(frozen=True)
class Form:
    user: str  # who posts it
    active: bool  # on an active grant (else a pending request)
    action: str  # URL under the request, or an absolute path
    fields: dict[str, str]


FORMS = {
    "approve": Form("carol", False, "approve", {"comment": "fine"}),
    "deny": Form("carol", False, "deny", {"reason": "no"}),
    "withdraw": Form("alice", False, "cancel", {}),
    "revoke": Form("carol", True, "revoke", {"reason": "done"}),
    "credential": Form("alice", True, "credential", {}),
    "new request": Form(
        "alice",
        False,
        "/console/new",
        {"scope": "orders/read-only", "duration": "30m", "reason": "x"},
    ),
    "sign out": Form("carol", False, "/console/signout", {}),
}
ATTACKS: dict[str, Callable[[ConsoleHarness, Client], dict[str, Any]]] = {
    "no token": lambda _c, _b: {"csrf": None},
    "forged token": lambda _c, _b: {"csrf": FORGED},
    "another session's token": lambda c, _b: {"csrf": c.client("dave").get("/console/").csrf},
    "another site": lambda _c, b: {"csrf": b.get("/console/").csrf, "headers": EVIL},
}
NOTHING_DONE = "nothing was done"


def _snapshot(console: ConsoleHarness, rid: str) -> tuple[object, ...]:
    """Everything a form could have changed."""
    kinds = ("request.created", "request.approved", "request.denied", "request.cancelled",
             "grant.revoked", "credential.issued", "identity.signed_out")  # fmt: skip
    return (
        console.state(rid), console.approvals(rid),
        {kind: len(console.records(kind)) for kind in kinds},
    )  # fmt: skip


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("form", FORMS)
def test_a_form_without_this_sessions_token_changes_nothing(
    console: ConsoleHarness, form: str, attack: str
) -> None:
    spec = FORMS[form]
    rid = console.api.active_request("alice") if spec.active else console.pending()
    browser = console.client(spec.user)
    path = spec.action if spec.action.startswith("/") else f"/console/requests/{rid}/{spec.action}"
    before = _snapshot(console, rid)
    sent = ATTACKS[attack](console, browser)
    answer = browser.post(path, spec.fields, **sent)
    assert answer.status == 403, answer.body[:500]
    assert NOTHING_DONE in answer.body
    assert _snapshot(console, rid) == before
    assert browser.get("/console/").status == 200  # still signed in: signing out was refused too


@pytest.mark.parametrize("form", FORMS)
def test_the_same_form_with_its_token_from_this_site_works(
    console: ConsoleHarness, form: str
) -> None:
    """The control: the refusals above are the token's and the origin's doing."""
    spec = FORMS[form]
    rid = console.api.active_request("alice") if spec.active else console.pending()
    browser = console.client(spec.user)
    path = spec.action if spec.action.startswith("/") else f"/console/requests/{rid}/{spec.action}"
    before = _snapshot(console, rid)
    browser.get(f"/console/requests/{rid}")
    here = {"Origin": f"http://127.0.0.1:{console.port}"}
    answer = browser.post(path, spec.fields, headers=here)
    assert answer.status in (200, 303), answer.body[:500]
    assert _snapshot(console, rid) != before


SIGN_IN_ATTACKS: dict[str, Callable[[Client], dict[str, Any]]] = {
    "no token": lambda b: {"csrf": None},
    "forged token": lambda b: {"csrf": FORGED},
    "another browser's token": lambda b: {"csrf": Client(b.port).get("/console/signin").csrf},
    "another site": lambda b: {"csrf": b.get("/console/signin").csrf, "headers": EVIL},
}


@pytest.mark.parametrize("attack", SIGN_IN_ATTACKS)
def test_sign_in_forms_refuse_a_missing_or_forged_token(
    console: ConsoleHarness, attack: str
) -> None:
    browser = Client(console.port)
    browser.get("/console/signin")  # its own sign-in cookie
    sent = SIGN_IN_ATTACKS[attack](browser)
    answer = browser.post("/console/signin/token", {"token": console.api.token("mallory")}, **sent)
    assert answer.status == 403, answer.body[:500]
    assert NOTHING_DONE in answer.body
    assert "pgwarden_console" not in browser.cookies
    assert console.records("identity.signed_in") == []


def test_a_sign_in_without_the_sign_in_cookie_is_refused(console: ConsoleHarness) -> None:
    """A cross-site form carries a token it copied, but cannot plant the cookie it derives from."""
    token = Client(console.port).get("/console/signin").csrf
    attacker = Client(console.port)  # the victim's browser: no sign-in cookie of this console
    answer = attacker.post("/console/signin/token", {"token": console.api.token("mallory")},
                           csrf=token)  # fmt: skip
    assert answer.status == 403
    assert "pgwarden_console" not in attacker.cookies


@pytest.mark.parametrize(
    ("origin", "works"),
    [("https://console.example", True), ("http://evil.example", False)],
)
def test_behind_a_proxy_that_rewrites_host_the_forwarded_host_is_this_site(
    console: ConsoleHarness, origin: str, works: bool
) -> None:
    """A TLS proxy that sends `Host: 127.0.0.1:PORT` and the browser's host in
    `X-Forwarded-Host`: forms from that host work, forms from another site still do not."""
    rid = console.pending()
    browser = console.client("carol", {"X-Forwarded-Host": "console.example"})
    browser.get(f"/console/requests/{rid}")
    answer = browser.post(
        f"/console/requests/{rid}/approve", {"comment": "ok"}, headers={"Origin": origin}
    )
    assert (answer.status == 303) is works, answer.body[:300]
    assert (console.state(rid) == "active") is works
