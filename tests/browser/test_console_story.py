"""The console's story in a real browser, against a real `pgwarden serve` and PostgreSQL.

alice asks for access in her browser; carol's inbox, open in another browser, shows the request
without a reload; carol approves with a comment; alice's page turns active and shows the password
once; psql logs in through the proxy with it; carol revokes from the request's page and that psql
session ends. The inbox and request pages are saved as screenshots (test-artifacts/screenshots).
"""

from __future__ import annotations

import subprocess

import pytest

from tests.fixtures.browser import BrowserFactory
from tests.fixtures.console import (
    HOSTILE,
    HOSTILE_SHOWN,
    psql,
    request_id_of,
    signed_in,
)
from tests.fixtures.served import Served

pytestmark = pytest.mark.integration
REASON = "incident 7 " + HOSTILE


def test_request_approve_connect_revoke(browser_factory: BrowserFactory, served: Served) -> None:
    carol = signed_in(browser_factory, served, "carol")
    assert "Nothing waits for your approval" in carol.text()
    alice = signed_in(browser_factory, served, "alice")

    alice.follow("Request access")
    alice.select("duration", "30m")
    alice.fill("reason", REASON)
    alice.press("Send the request")
    alice.wait_for_text("Your request was sent to its approvers.")
    request_id = request_id_of(alice)
    assert "pending" in alice.text()
    assert "Approve" not in alice.text()  # never one's own

    carol.wait_for_text(request_id)  # the inbox updated itself: no reload
    assert "alice" in carol.text()
    assert "0 of 1" in carol.text()
    carol.screenshot("console-inbox")

    carol.follow(request_id)
    page = carol.text()
    assert "as the database role pgw_orders_ro" in page
    assert "you are in dba" in page
    assert HOSTILE_SHOWN in page  # shown, never run
    carol.screenshot("console-request")
    carol.fill("comment", "ok for the incident")
    carol.press("Approve")
    carol.wait_for_text("You approved this request.")
    assert "carol approved at" in carol.text()

    alice.wait_for_text("Get a password")  # her page updated itself too
    alice.press("Get a password")
    alice.wait_for_text("This password is shown once")
    uri = alice.driver.find_element("id", "uri").text
    assert psql(uri, "SELECT 41 + 1").stdout.strip() == "42"

    holding = subprocess.Popen(
        ["psql", uri, "-X", "-At", "-c", "SELECT pg_sleep(60)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        carol.open(f"{served.url}/console/sessions")
        carol.wait_for_text("running a query")
        carol.open(f"{served.url}/console/requests/{request_id}")
        carol.fill("reason", "incident closed")
        carol.press("Revoke")
        carol.wait_for_text("The grant was revoked")
        _, errors = holding.communicate(timeout=20)
    finally:
        if holding.poll() is None:
            holding.kill()
    assert holding.returncode != 0
    assert "revoked by carol" in errors
    assert carol.console_errors() == []
    assert alice.console_errors() == []
