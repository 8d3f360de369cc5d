"""More of the console in a real browser, against one real `pgwarden serve` and PostgreSQL.

Denying with a reason and asking again; an approver who asks herself (no Approve button, and a
hand-made POST to the approve URL refused; a forged CSRF token refused too); hostile query text
through psql shown escaped on the session's transcript; killing a running psql from the Sessions
page, then again from a page opened before; the core flows with JavaScript turned off; approving
with the keyboard alone; phone-sized pages that do not scroll sideways; and what a signed-out
browser's Back and reload show. People sign in with API tokens (single sign-on:
test_console_sso.py).
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.fixtures.browser import PHONE, Browser, BrowserFactory
from tests.fixtures.console import (
    HOSTILE,
    HOSTILE_SHOWN,
    psql,
    request_id_of,
    signed_in,
)
from tests.fixtures.served import Served

pytestmark = pytest.mark.integration
MAX_TABS = 60  # Tab presses to reach a field: more than the page has focusable elements
MAX_RELOADS = 50  # of a page waiting for the audit log to have a session's end
# Submits a form made on the spot: what another page, or a person with the developer tools,
# can send. WebDriver runs it whatever the page's CSP says (the page's own scripts cannot).
POST_FORM = """
const [action, fields] = arguments;
const form = document.createElement("form");
form.method = "post";
form.action = action;
for (const [name, value] of Object.entries(fields)) {
  const input = document.createElement("input");
  input.type = "hidden";
  input.name = name;
  input.value = value;
  form.appendChild(input);
}
document.body.appendChild(form);
form.submit();
"""


def ask(browser: Browser, reason: str, scope: str = "orders/read-only") -> str:
    """Request access with the console's form; the new request's id."""
    browser.follow("Request access")
    browser.driver.find_element(By.CSS_SELECTOR, f"input[name=scope][value='{scope}']").click()
    browser.select("duration", "30m")
    browser.fill("reason", reason)
    browser.press("Send the request")
    browser.wait_for_text("Your request was sent to its approvers.")
    return request_id_of(browser)


def pending(served: Served, user: str, reason: str) -> str:
    """A request of `user`'s made through the API, for tests about the approver's side."""
    body = {"target": "orders", "access_level": "read-only", "duration": "30m", "reason": reason}
    status, created = served.call("POST", "/api/v1/requests", user, body)
    assert status == 201, created
    return str(created["id"])


def state_of(browser: Browser) -> str:
    """The state a request's page shows in its heading."""
    return str(browser.driver.find_element(By.CSS_SELECTOR, "h1 .state").text)


def buttons(browser: Browser) -> list[str]:
    return [b.text.strip() for b in browser.driver.find_elements(By.TAG_NAME, "button")]


def csrf_of(browser: Browser) -> str:
    field = browser.driver.find_element(By.CSS_SELECTOR, "input[name=csrf_token]")
    return str(field.get_attribute("value"))


def post_from_page(browser: Browser, path: str, fields: dict[str, str]) -> None:
    browser.driver.execute_script(POST_FORM, path, fields)


def test_a_denied_request_shows_why_and_request_again_opens_the_form_as_it_was(
    browser_factory: BrowserFactory, served: Served
) -> None:
    alice = signed_in(browser_factory, served, "alice")
    request_id = ask(alice, "migrate the invoices table", scope="orders/read-write")
    carol = signed_in(browser_factory, served, "carol")
    carol.open(f"{served.url}/console/requests/{request_id}")
    carol.fill("reason", "writes go through the release process; ask read-only")
    carol.press("Deny")
    carol.wait_for_text("You denied this request.")

    # alice's page, open all along, updates itself.
    alice.wait_for_text("carol: writes go through the release process; ask read-only")
    assert state_of(alice) == "denied"
    assert "Get a password" not in buttons(alice)
    alice.follow("Request again")
    alice.wait_for_text("Send the request")
    chosen = alice.driver.find_element(By.CSS_SELECTOR, "input[name=scope]:checked")
    assert chosen.get_attribute("value") == "orders/read-write"  # not the form's default
    assert alice.console_errors() == []
    assert carol.console_errors() == []


def test_an_approver_cannot_approve_her_own_request_and_a_forged_form_does_nothing(
    browser_factory: BrowserFactory, served: Served
) -> None:
    carol = signed_in(browser_factory, served, "carol")  # an approver of orders, and an admin
    own = ask(carol, "check the replication lag myself")
    assert state_of(carol) == "pending"
    assert "Approve" not in buttons(carol)
    token = csrf_of(carol)

    post_from_page(carol, f"/console/requests/{own}/approve", {"csrf_token": token, "comment": ""})
    carol.wait_for_text(f"you cannot approve your own request {own} (admins neither)")
    carol.open(f"{served.url}/console/requests/{own}")
    assert state_of(carol) == "pending"
    assert "carol approved" not in carol.text()

    # alice's request, which carol may approve; a form with a token not derived from her session
    theirs = pending(served, "alice", "incident 51")
    carol.open(f"{served.url}/console/requests/{theirs}")
    assert "Approve" in buttons(carol)
    forged = {"csrf_token": token[::-1], "comment": "forged"}
    post_from_page(carol, f"/console/requests/{theirs}/approve", forged)
    carol.wait_for_text("this form has expired or did not come from this console; nothing was done")
    carol.open(f"{served.url}/console/requests/{theirs}")
    assert state_of(carol) == "pending"
    assert "carol approved" not in carol.text()
    # The same form with her token does it: the token was all that was wrong.
    post_from_page(carol, f"/console/requests/{theirs}/approve", {**forged, "csrf_token": token})
    carol.wait_for_text("You approved this request.")
    assert state_of(carol) == "active"


def test_a_transcript_shows_hostile_statements_as_text(
    browser_factory: BrowserFactory, served: Served
) -> None:
    request_id, dsn = served.active_grant()
    ran = psql(dsn, f"SELECT '{HOSTILE}' AS note", "SELECT 1/0")
    assert HOSTILE in ran.stdout
    assert "division by zero" in ran.stderr

    carol = signed_in(browser_factory, served, "carol")
    carol.open(f"{served.url}/console/requests/{request_id}")
    sessions = carol.driver.find_elements(By.CSS_SELECTOR, "section[aria-labelledby=sessions] a")
    assert len(sessions) == 1, carol.text()
    session_id = sessions[0].text
    sessions[0].click()
    carol.wait_for_text(f"Session {session_id}")
    reload_until(carol, "division by zero")

    page = carol.text()
    assert f"SELECT '{HOSTILE_SHOWN}' AS note" in page
    assert "SELECT 1, 1 row" in page  # its outcome
    assert "failed: 22012 division by zero" in page
    statements = carol.driver.find_elements(By.CSS_SELECTOR, "pre.sql")
    assert [s.text for s in statements] == [f"SELECT '{HOSTILE_SHOWN}' AS note", "SELECT 1/0"]
    scripts = carol.driver.find_elements(By.TAG_NAME, "script")
    assert [s.get_attribute("src") for s in scripts] == [f"{served.url}/console/static/console.js"]
    with pytest.raises(NoAlertPresentException):
        carol.driver.switch_to.alert.text  # noqa: B018 - reading it is the check
    assert carol.console_errors() == []
    carol.screenshot("console-transcript")


def reload_until(browser: Browser, text: str) -> None:
    """Reload until the page shows `text` (what the audit log has not yet been given)."""
    for _ in range(MAX_RELOADS):
        if text in browser.text():
            return
        browser.driver.refresh()
    browser.wait_for_text(text)


def test_kill_from_the_sessions_page_ends_psql_and_a_second_kill_says_it_had_ended(
    browser_factory: BrowserFactory, served: Served
) -> None:
    request_id, dsn = served.active_grant()
    holding = subprocess.Popen(
        ["psql", dsn, "-X", "-At", "-c", "SELECT pg_sleep(60)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        carol = signed_in(browser_factory, served, "carol")
        carol.open(f"{served.url}/console/sessions")
        carol.wait_for_text("running a query")
        session_id = served.session_of(request_id)
        row = f"form[action='/console/sessions/{session_id}/kill']"
        driver = carol.driver
        first = driver.current_window_handle
        # The same page in another tab, its reason typed: it keeps its form while it is edited.
        driver.switch_to.new_window("tab")
        carol.open(f"{served.url}/console/sessions")
        carol.fill("reason", "stale tab", within=row)
        second = driver.current_window_handle

        driver.switch_to.window(first)
        carol.fill("reason", "runaway query", within=row)
        carol.press("Kill", within=row)
        carol.wait_for_text("The session was ended.")
        _, errors = holding.communicate(timeout=20)
    finally:
        if holding.poll() is None:
            holding.kill()
    assert holding.returncode != 0
    assert "session ended by an administrator: runaway query" in errors, errors

    driver.switch_to.window(second)
    carol.wait_for_text("This page has changed since you opened it")  # told, not replaced
    carol.press("Kill", within=row)
    carol.wait_for_text("That session had already ended.")
    assert session_id not in carol.text()


def test_request_approve_and_deny_work_without_javascript(
    browser_factory: BrowserFactory, served: Served
) -> None:
    alice = signed_in(browser_factory, served, "alice", javascript=False)
    alice.open("data:text/html,<title>off</title><script>document.title = 'on'</script>")
    assert alice.driver.title == "off"  # scripts do not run in these browsers
    alice.open(f"{served.url}/console/")
    approved, denied = ask(alice, "incident 60"), ask(alice, "incident 61")
    carol = signed_in(browser_factory, served, "carol", javascript=False)
    assert approved in carol.text()
    assert denied in carol.text()

    carol.follow(approved)
    carol.fill("comment", "fine")
    carol.press("Approve")
    carol.wait_for_text("You approved this request.")
    carol.open(f"{served.url}/console/requests/{denied}")
    carol.fill("reason", "one at a time")
    carol.press("Deny")
    carol.wait_for_text("You denied this request.")

    alice.open(f"{served.url}/console/requests/{approved}")  # no polling: a reload shows it
    assert state_of(alice) == "active"
    alice.press("Get a password")
    alice.wait_for_text("This password is shown once")
    uri = alice.driver.find_element(By.ID, "uri").text
    assert psql(uri, "SELECT 41 + 1").stdout.strip() == "42"
    alice.open(f"{served.url}/console/requests/{denied}")
    assert state_of(alice) == "denied"
    assert "carol: one at a time" in alice.text()


def test_the_keyboard_alone_reaches_the_comment_and_approve(
    browser_factory: BrowserFactory, served: Served
) -> None:
    request_id = pending(served, "alice", "incident 70")
    carol = signed_in(browser_factory, served, "carol")
    carol.open(f"{served.url}/console/requests/{request_id}")
    keys = ActionChains(carol.driver)
    for _ in range(MAX_TABS):
        keys.send_keys(Keys.TAB).perform()
        if focused(carol.driver).get("id") == "comment":
            break
    assert focused(carol.driver).get("id") == "comment", "Tab never reached the comment field"
    keys.send_keys("checked with the on-call").perform()
    keys.send_keys(Keys.TAB).perform()
    assert focused(carol.driver) == {"tag": "button", "id": "", "text": "Approve"}
    keys.send_keys(Keys.ENTER).perform()
    carol.wait_for_text("You approved this request.")
    assert "carol approved at" in carol.text()
    assert "checked with the on-call" in carol.text()


def focused(driver: Any) -> dict[str, str]:
    element = driver.switch_to.active_element
    return {"tag": element.tag_name, "id": element.get_attribute("id") or "",
            "text": element.text.strip()}  # fmt: skip


def test_inbox_and_my_requests_fit_a_phone(browser_factory: BrowserFactory, served: Served) -> None:
    long_reason = (
        "incident 80: the nightly export stalls, see "
        "https://tickets.example.test/browse/OPS-80417?focusedCommentId=99812734#comment-99812734"
    )
    pending(served, "alice", long_reason)
    served.active_grant()
    alice = signed_in(browser_factory, served, "alice", PHONE)
    alice.follow("My requests")
    alice.wait_for_text("Your latest requests")
    assert no_sideways_scrolling(alice)
    alice.screenshot("console-mine-phone")

    carol = signed_in(browser_factory, served, "carol", PHONE)
    assert "OPS-80417" in carol.text()
    assert no_sideways_scrolling(carol)
    carol.screenshot("console-inbox-phone")


def no_sideways_scrolling(browser: Browser) -> bool:
    wide, view = browser.driver.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert browser.viewport_size()[0] == PHONE.width
    return bool(wide <= view)


def test_after_signing_out_back_and_reload_land_on_the_sign_in_page(
    browser_factory: BrowserFactory, served: Served
) -> None:
    alice = signed_in(browser_factory, served, "alice")
    alice.follow("My requests")
    alice.wait_for_text("My requests")
    cookie = alice.cookies()["pgwarden_console"]
    alice.press("Sign out")
    alice.wait_for_text("you signed out")
    assert "pgwarden_console" not in alice.cookies()

    alice.driver.back()  # to My requests: asked again (no-store), not shown from a cache
    alice.wait_for_text("Sign in to pgwarden")
    assert "/console/signin" in alice.current_url
    assert "Your latest requests" not in alice.text()
    alice.driver.refresh()
    alice.wait_for_text("Sign in to pgwarden")

    # A copy of the cookie kept from before (another profile, a stolen one) opens nothing.
    alice.driver.add_cookie({k: cookie[k] for k in ("name", "value", "path", "httpOnly")})
    alice.open(f"{served.url}/console/mine")
    alice.wait_for_text("your pgwarden session was ended at")
    assert "/console/signin" in alice.current_url
