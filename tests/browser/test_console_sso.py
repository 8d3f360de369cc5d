"""Signing in to the console with the organization's identity provider, in a real browser.

A real `pgwarden serve` with `identity.oidc` pointed at the tests' OpenID provider
(`oidc-provider`, tests/fixtures/idp.py), and Chromium going through the provider's own sign-in
and consent pages. alice (engineers) and carol (leads, engineers) exist only at the provider; the
policy names the group `leads` as approvers, so what carol may approve comes from the groups the
provider says she has.

The provider registers the console's callback as a redirect URI of the `pgwarden` client:
`http://127.0.0.1/console/signin/callback`. The client is a native one (`application_type:
native`), for which oidc-provider follows RFC 8252 section 7.3: a loopback IP redirect URI matches
whatever port it comes with, so the address need not be known before the serve process picks its
API port; path and host still have to match exactly.
"""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Iterator
from urllib.parse import urlencode, urlsplit

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By

from proxy.demo.local_idp import REDIRECT_URIS
from tests.fixtures.browser import STALE_RETRIES, Browser, BrowserFactory
from tests.fixtures.idp import Idp, default_clients, running_idp, sso_config
from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.served import Served, serving

pytestmark = pytest.mark.integration

CONSOLE_CALLBACK = "http://127.0.0.1/console/signin/callback"  # any port: see the docstring
REQUEST_LINK = re.compile(r"/console/requests/([0-9a-f]+)")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
PROVIDER_STEP_TIMEOUT = 10.0  # one page of the provider's, and its redirects, on loopback
POLL_INTERVAL = 0.05


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    clients = default_clients((*REDIRECT_URIS, CONSOLE_CALLBACK))
    with running_idp(tmp_path_factory.mktemp("console-idp"), clients=clients) as running:
        yield running


@pytest.fixture(scope="module")
def served(
    deployment: PgwardenDeployment, provider: Idp, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("console-sso")
    with serving(sso_config(deployment, directory, provider), directory / "state.db") as running:
        yield running


def at_issuer(browser: Browser, idp: Idp) -> bool:
    """Whether the browser is on the provider's site (by origin: a prefix of the address would
    take the console at 127.0.0.1:43157 for a provider at 127.0.0.1:4315)."""
    return urlsplit(browser.current_url).netloc == urlsplit(idp.issuer).netloc


def provider_page(browser: Browser) -> str:
    """Which of the provider's pages the browser shows (its `main` element's id), or ''."""
    for _ in range(STALE_RETRIES):
        try:
            found = browser.driver.find_elements(By.CSS_SELECTOR, "main[id]")
            return str(found[0].get_attribute("id")) if found else ""
        except StaleElementReferenceException:
            continue  # the page was replaced between finding its `main` and reading it
    return ""


def begin_sign_in(browser: Browser, served: Served, idp: Idp) -> None:
    """From the console's sign-in page to the provider's sign-in form."""
    browser.open(f"{served.url}/console/")
    assert "/console/signin" in browser.current_url
    browser.press("Sign in with single sign-on")
    browser.wait_for_text("to continue to pgwarden")
    assert at_issuer(browser, idp), browser.current_url
    assert provider_page(browser) == "login"


def at_provider(browser: Browser, idp: Idp, user: str, *, allow: bool = True) -> None:
    """Sign in as `user` at the provider, then allow (or deny) on its consent page."""
    browser.fill("username", user)
    browser.fill("password", idp.password(user))
    browser.press("Sign in")
    if next_page(browser, idp, "login") == "consent":
        browser.press("Allow" if allow else "Deny")
        next_page(browser, idp, "consent")


def where(browser: Browser, idp: Idp) -> str:
    """`console` once back on pgwarden's pages; the provider's page (its `main` id); or '' in
    between (a page still loading, or one that changed while it was read)."""
    if not at_issuer(browser, idp):
        return "console" if "/console/" in browser.current_url else ""
    kind = provider_page(browser)
    return kind if at_issuer(browser, idp) else ""  # the page may have gone meanwhile


def next_page(browser: Browser, idp: Idp, leaving: str) -> str:
    """Wait until the browser has left the provider's `leaving` page and stands on the next one:
    `consent` or `console`."""
    deadline = time.monotonic() + PROVIDER_STEP_TIMEOUT
    for _ in range(int(PROVIDER_STEP_TIMEOUT / POLL_INTERVAL) + 1):
        kind = where(browser, idp)
        if kind not in ("", leaving) or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    assert kind in ("console", "consent"), f"left {leaving!r} for {kind!r}: {browser.text()}"
    return kind


def sso_signed_in(browsers: BrowserFactory, served: Served, idp: Idp, user: str) -> Browser:
    browser = browsers(label=user)
    begin_sign_in(browser, served, idp)
    at_provider(browser, idp, user)
    browser.wait_for_text("Waiting for you")
    assert urlsplit(browser.current_url).path == "/console/"
    return browser


def bearer_status(served: Served, secret: str) -> int:
    """The API's answer to the console session's secret used as a bearer (it is the same kind
    of session): whether the server still honours it."""
    conn = http.client.HTTPConnection("127.0.0.1", served.api_port, timeout=30)
    try:
        conn.request("GET", "/api/v1/requests", headers={"Authorization": f"Bearer {secret}"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_single_sign_on_signs_people_in_and_their_provider_groups_decide_who_approves(
    browser_factory: BrowserFactory, served: Served, provider: Idp
) -> None:
    carol = browser_factory(label="carol")
    begin_sign_in(carol, served, provider)
    carol.screenshot("console-sso-provider-login")
    at_provider(carol, provider, "carol")
    carol.wait_for_text("Nothing waits for your approval")
    assert carol.driver.find_element(By.CSS_SELECTOR, ".me").text == "carol"
    session = carol.cookies()["pgwarden_console"]
    assert session["httpOnly"]
    assert session["sameSite"] == "Lax"
    assert "pgwarden_sso_flow" not in carol.cookies()  # the flow is over

    alice = sso_signed_in(browser_factory, served, provider, "alice")
    alice.follow("Request access")
    alice.fill("reason", "incident 77: read the stuck orders")
    alice.press("Send the request")
    alice.wait_for_text("Your request was sent to its approvers.")
    match = REQUEST_LINK.search(alice.current_url)
    assert match is not None, alice.current_url
    request_id = match.group(1)
    assert "Needs 1 approval from leads (group)" in alice.text()

    carol.wait_for_text(request_id)  # her inbox: she is in leads at the provider
    carol.follow(request_id)
    assert "you are in leads" in carol.text()
    carol.fill("comment", "approved by a lead")
    carol.press("Approve")
    carol.wait_for_text("You approved this request.")
    carol.screenshot("console-sso-approved")
    alice.wait_for_text("Get a password")  # her page: active now
    assert alice.console_errors() == []
    assert carol.console_errors() == []


def test_a_callback_from_a_sign_in_this_browser_did_not_begin_is_refused(
    browser_factory: BrowserFactory, served: Served, provider: Idp
) -> None:
    # Someone else's sign-in, completed at the provider, with a genuine code and state...
    callback = provider.authorize(started_elsewhere(served), user="alice")
    assert callback.startswith(f"{served.url}/console/signin/callback?"), callback
    # ...opened in a browser that began none (login CSRF: it would sign the victim in as alice).
    browser = browser_factory(label="victim")
    browser.open(callback)
    browser.wait_for_text("this sign-in was begun in another browser, or too long ago")
    assert "Sign in to pgwarden" in browser.text()
    assert "pgwarden_console" not in browser.cookies()
    browser.open(f"{served.url}/console/mine")
    assert "/console/signin" in browser.current_url  # not signed in as anyone

    # Its own sign-in begun, but the provider's answer carries another state.
    begin_sign_in(browser, served, provider)
    forged = {"code": "forged", "state": "not-the-one-sent", "iss": provider.issuer}
    browser.open(f"{served.url}/console/signin/callback?{urlencode(forged)}")
    browser.wait_for_text("the sign-in's state does not match; sign in again")
    assert "pgwarden login" not in browser.text()  # the CLI's advice has no place here
    assert "pgwarden_console" not in browser.cookies()
    # Chromium logs the refusals' statuses (400, 401); nothing else went wrong on these pages.
    assert [e for e in browser.console_errors() if "/console/signin/callback?" not in e] == []


def started_elsewhere(served: Served) -> str:
    """The provider address of a console sign-in begun by another client (its own cookies)."""
    conn = http.client.HTTPConnection("127.0.0.1", served.api_port, timeout=30)
    try:
        conn.request("GET", "/console/signin")
        page = conn.getresponse()
        body = page.read().decode()
        cookie = page.getheader("Set-Cookie", "").split(";")[0]
        token = CSRF.search(body)
        assert token is not None, body[:500]
        assert cookie.startswith("pgwarden_signin="), cookie
        form = urlencode({"csrf_token": token.group(1), "next": "/console/"})
        headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
        conn.request("POST", "/console/signin/sso", body=form, headers=headers)
        started = conn.getresponse()
        started.read()
        assert started.status == 303, started.status
        return str(started.getheader("Location"))
    finally:
        conn.close()


def test_denying_at_the_provider_brings_the_person_back_saying_so(
    browser_factory: BrowserFactory, served: Served, provider: Idp
) -> None:
    browser = browser_factory(label="alice")
    begin_sign_in(browser, served, provider)
    at_provider(browser, provider, "alice", allow=False)
    browser.wait_for_text("the identity provider refused: the person denied the request")
    assert "/console/signin" in browser.current_url
    assert "pgwarden_console" not in browser.cookies()
    browser.screenshot("console-sso-denied")


def test_signing_out_ends_the_pgwarden_session(
    browser_factory: BrowserFactory, served: Served, provider: Idp
) -> None:
    carol = sso_signed_in(browser_factory, served, provider, "carol")
    cookie = carol.cookies()["pgwarden_console"]
    assert bearer_status(served, cookie["value"]) == 200

    carol.press("Sign out")
    carol.wait_for_text("you signed out")
    assert "pgwarden_console" not in carol.cookies()
    assert bearer_status(served, cookie["value"]) == 401  # ended at the server, not only here

    # The cookie, had a copy of it survived (another profile, a stolen one), opens nothing.
    carol.driver.add_cookie({k: cookie[k] for k in ("name", "value", "path", "httpOnly")})
    carol.open(f"{served.url}/console/mine")
    carol.wait_for_text("your pgwarden session was ended at")
    assert "/console/signin" in carol.current_url
