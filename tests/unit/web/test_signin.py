"""Signing in to the console, its cookies, and every way a console session ends (row 47).

The session cookie is HttpOnly and SameSite=Lax; over plain HTTP it is scoped to /console, over
HTTPS (here or at a TLS proxy, `X-Forwarded-Proto`) it is Secure with the `__Host-` prefix and
Path=/. Signing out, the session's 8 hours passing, the API token it was opened with being
revoked, and the person leaving the policy each send the old cookie to the sign-in page, which
says why. A refused sign-in is a 401 page with the reason and an audit record.
"""

from __future__ import annotations

import html
from dataclasses import replace
from datetime import timedelta
from http.cookies import Morsel, SimpleCookie
from urllib.parse import parse_qs, urlsplit

import pytest

from proxy.api.auth_routes import StartLimit
from proxy.identity.sessions import new_session
from proxy.identity.tokens import Person
from proxy.policy.models import UserName
from proxy.web.deps import TOKEN_SESSION_TTL
from tests.unit.web.harness import Answer, Client, ConsoleHarness

HTTPS = {"X-Forwarded-Proto": "https"}


def cookie(answer: Answer, name: str) -> Morsel[str]:
    for line in answer.set_cookies:
        jar: SimpleCookie = SimpleCookie()
        jar.load(line)
        if name in jar:
            return jar[name]
    raise AssertionError(f"no Set-Cookie {name}: {answer.set_cookies}")


def test_over_http_the_cookies_are_httponly_lax_and_scoped_to_the_console(
    console: ConsoleHarness,
) -> None:
    browser = Client(console.port)
    signin = browser.get("/console/signin")
    signed = browser.post("/console/signin/token", {"token": console.api.token("carol")})
    for answer, name in ((signin, "pgwarden_signin"), (signed, "pgwarden_console")):
        morsel = cookie(answer, name)
        assert morsel["httponly"] is True
        assert morsel["samesite"] == "Lax"
        assert morsel["path"] == "/console"
        assert not morsel["secure"]
    max_age = cookie(signed, "pgwarden_console")["max-age"]
    assert max_age == str(int(TOKEN_SESSION_TTL.total_seconds()))


def test_over_https_the_cookies_are_secure_host_cookies(console: ConsoleHarness) -> None:
    browser = Client(console.port, HTTPS)
    signin = browser.get("/console/signin")
    signed = browser.post("/console/signin/token", {"token": console.api.token("carol")})
    assert signed.status == 303, signed.body[:500]
    for answer, name in ((signin, "__Host-pgwarden_signin"), (signed, "__Host-pgwarden_console")):
        morsel = cookie(answer, name)
        assert (morsel["secure"], morsel["httponly"], morsel["samesite"]) == (True, True, "Lax")
        assert morsel["path"] == "/"
        assert not morsel["domain"]  # host-only, as the prefix requires
    assert browser.get("/console/").status == 200


def test_an_https_cookie_sent_over_plain_http_opens_nothing(console: ConsoleHarness) -> None:
    """A `__Host-` cookie is only read when the console is reached over HTTPS."""
    browser = console.client("carol", HTTPS)
    browser.always = {}
    assert browser.get("/console/").status == 303


def sign_in_page_after(browser: Client, path: str = "/console/") -> str:
    """Visit `path` with the browser's cookie: it must be sent to sign in; that page's text."""
    answer = browser.get(path)
    assert answer.status == 303, answer.body[:500]
    assert answer.location.startswith("/console/signin?"), answer.location
    page = browser.get(answer.location)
    assert page.status == 200
    return html.unescape(page.body)


def test_signing_out_ends_the_session_for_the_old_cookie_too(console: ConsoleHarness) -> None:
    browser = console.client("carol")
    stolen = dict(browser.cookies)
    browser.get("/console/")
    out = browser.post("/console/signout")
    assert (out.status, out.location) == (303, "/console/signin?why=you%20signed%20out")
    assert browser.cookies.get("pgwarden_console") != stolen["pgwarden_console"]  # dropped
    assert "you signed out" in browser.get(out.location).body
    replay = Client(console.port)
    replay.cookies = stolen
    assert "your pgwarden session was ended at" in sign_in_page_after(replay)
    (record,) = console.records("identity.signed_out")
    assert record["user"] == "carol"


def test_a_session_expires_after_its_hours(console: ConsoleHarness) -> None:
    browser = console.client("carol")
    console.clock.advance(TOKEN_SESSION_TTL - timedelta(seconds=1))
    assert browser.get("/console/").status == 200
    console.clock.advance(timedelta(seconds=1))
    answer = browser.get("/console/mine")
    assert parse_qs(urlsplit(answer.location).query)["next"] == ["/console/mine"]
    assert "your pgwarden session expired at" in sign_in_page_after(browser, "/console/mine")


def test_revoking_the_api_token_ends_the_console_session_opened_with_it(
    console: ConsoleHarness,
) -> None:
    browser = console.client("carol")
    (record,) = console.records("identity.signed_in")
    with console.api.store.write() as tx:
        assert tx.revoke_token(record["subject"], console.clock.now())
    assert "the API token you signed in with was revoked" in sign_in_page_after(browser)


def test_a_person_removed_from_the_policy_loses_the_console(console: ConsoleHarness) -> None:
    browser = console.client("carol")
    current = console.policy.current
    users = {name: user for name, user in current.users.items() if name != "carol"}
    console.policy.current = replace(current, users=users)
    assert "'carol' is no longer in the policy" in sign_in_page_after(browser)
    again = browser.sign_in(console.api.token("carol"))
    assert again.status == 401


def _session_secret(console: ConsoleHarness) -> str:
    person = Person(UserName("carol"), "https://idp.example", "sub-1", None, ())
    secret, session = new_session(person, console.clock.now(), timedelta(hours=1))
    with console.api.store.write() as tx:
        tx.insert_api_session(session)
    return secret


def _revoked_token(console: ConsoleHarness) -> str:
    token = console.api.token("carol")
    with console.api.store.write() as tx:
        (record,) = tx.tokens()
        tx.revoke_token(record.id, console.clock.now())
    return token


REFUSED = {
    "unknown token": (lambda c: "pgw_" + "x" * 40, "unknown token"),
    "revoked token": (_revoked_token, "this token was revoked"),
    "a session secret": (_session_secret, "paste an API token (it begins with pgw_)"),
    "nothing": (lambda c: "", "paste an API token"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_refused_sign_in_says_why_and_is_audited(console: ConsoleHarness, case: str) -> None:
    make, why = REFUSED[case]
    browser = Client(console.port)
    answer = browser.sign_in(make(console))
    assert answer.status == 401
    assert why in answer.body
    assert 'name="token"' in answer.body  # the form again, to try another
    assert "pgwarden_console" not in browser.cookies
    (refusal,) = console.records("identity.sign_in_refused")
    assert (refusal["method"], refusal["reason"]) == ("console-token", "token")
    assert why in refusal["detail"]
    assert console.records("identity.signed_in") == []


def test_a_sign_in_is_audited_with_its_session(console: ConsoleHarness) -> None:
    console.client("carol")
    (record,) = console.records("identity.signed_in")
    assert (record["user"], record["method"], record["issuer"]) == (
        "carol", "console-token", "pgwarden:api-token",
    )  # fmt: skip
    assert record["session"].startswith("ses_")


def test_sign_ins_from_one_address_are_rate_limited(console: ConsoleHarness) -> None:
    """Guessing tokens through the console is held back (and cannot flood the audit log)."""
    browser = Client(console.port)
    browser.get("/console/signin")
    for _ in range(StartLimit.BURST):
        assert browser.post("/console/signin/token", {"token": "pgw_guess"}).status == 401
    good = {"token": console.api.token("carol")}
    held = browser.post("/console/signin/token", good)
    assert held.status == 429
    assert "too many sign-ins begun from 127.0.0.1" in held.body
    assert len(console.records("identity.sign_in_refused")) == StartLimit.BURST
    console.clock.advance(StartLimit.REFILL)
    assert browser.post("/console/signin/token", good).status == 303
