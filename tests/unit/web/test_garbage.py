"""Garbage sent to the console: a page with a 4xx and its reason, nothing done, no crash, and
redirects only ever to the console's own paths (the issue's "Bad input")."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from proxy.api.schemas import MAX_BODY_BYTES
from proxy.web.page import MAX_FIELD_CHARS
from tests.unit.web.harness import FORM, ConsoleHarness


def test_an_oversized_field_is_refused_and_nothing_is_done(console: ConsoleHarness) -> None:
    rid = console.pending()
    carol = console.client("carol")
    carol.get(f"/console/requests/{rid}")
    answer = carol.post(
        f"/console/requests/{rid}/approve", {"comment": "x" * (MAX_FIELD_CHARS + 1)}
    )
    assert answer.status == 400
    assert f"comment: at most {MAX_FIELD_CHARS} characters" in answer.body
    assert console.approvals(rid) == ()


def test_a_body_over_the_servers_limit_is_a_413_page(console: ConsoleHarness) -> None:
    rid = console.pending()
    carol = console.client("carol")
    token = carol.get(f"/console/requests/{rid}").csrf
    body = f"csrf_token={token}&comment=".encode() + b"x" * MAX_BODY_BYTES
    answer = carol.request("POST", f"/console/requests/{rid}/approve", body, {"Content-Type": FORM})
    assert answer.status == 413, answer.body[:500]
    assert "<!doctype html>" in answer.body
    assert console.approvals(rid) == ()


def test_an_oversized_sign_in_field_is_refused(console: ConsoleHarness) -> None:
    browser = console.client()
    browser.get("/console/signin")
    answer = browser.post("/console/signin/token", {"token": "pgw_" + "x" * MAX_FIELD_CHARS})
    assert answer.status == 400
    assert "pgwarden_console" not in browser.cookies


@pytest.mark.parametrize(
    "content_type", ["application/json", "multipart/form-data; boundary=x", ""]
)
def test_a_body_that_is_not_a_form_is_refused(console: ConsoleHarness, content_type: str) -> None:
    rid = console.pending()
    carol = console.client("carol")
    token = carol.get(f"/console/requests/{rid}").csrf
    body = json.dumps({"csrf_token": token, "comment": "ok"}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    answer = carol.request("POST", f"/console/requests/{rid}/approve", body, headers)
    assert answer.status == 415
    assert "send the form as a web page does" in answer.body
    assert console.approvals(rid) == ()


IDS = ["0123456789abcdef", "ZZZZ", "..%2f..%2fetc", "a" * 65, "%00", "12%0a34", "-1"]


@pytest.mark.parametrize("rid", IDS)
def test_an_unknown_or_malformed_request_id_is_a_404_page(
    console: ConsoleHarness, rid: str
) -> None:
    carol = console.client("carol")
    shown = carol.get(f"/console/requests/{rid}")
    assert shown.status == 404
    assert "<!doctype html>" in shown.body
    assert "no request" in shown.body
    carol.get("/console/")
    assert carol.post(f"/console/requests/{rid}/approve").status == 404
    assert carol.get(f"/console/sessions/{rid}").status == 404


EVIL_NEXT = ["https://evil.example/console/", "//evil.example/console/", "/\\evil.example",
             "javascript:alert(1)", "/console/\\\\evil.example", "http:/evil.example",
             "/console/x\r\nSet-Cookie: planted=1", "console/"]  # fmt: skip


@pytest.mark.parametrize("target", EVIL_NEXT)
def test_after_sign_in_only_console_paths_are_redirected_to(
    console: ConsoleHarness, target: str
) -> None:
    browser = console.client()
    page = browser.get("/console/signin?next=" + quote(target, safe=""))
    assert 'name="next" value="/console/"' in page.body
    answer = browser.post("/console/signin/token", {"token": console.api.token("carol"),
                                                    "next": target})  # fmt: skip
    assert answer.status == 303
    assert answer.location == "/console/"
    assert "planted" not in browser.cookies
    already = browser.get("/console/signin?next=" + quote(target, safe=""))  # signed in
    assert (already.status, already.location) == (303, "/console/")


def test_a_console_path_is_where_sign_in_returns(console: ConsoleHarness) -> None:
    """The control: the cases above fall back to the inbox because they are not console paths."""
    browser = console.client()
    first = browser.get("/console/mine?x=1")
    assert first.location == "/console/signin?next=%2Fconsole%2Fmine%3Fx%3D1"
    browser.get(first.location)
    answer = browser.post("/console/signin/token", {"token": console.api.token("carol"),
                                                    "next": "/console/mine?x=1"})  # fmt: skip
    assert answer.location == "/console/mine?x=1"


def test_an_error_pages_back_link_stays_on_the_console(console: ConsoleHarness) -> None:
    carol = console.client("carol")
    evil = carol.get("/console/requests/ff", {"Referer": "https://evil.example/console/x"})
    assert 'href="/console/"' in evil.body
    assert "evil.example" not in evil.body
    here = f"http://127.0.0.1:{console.port}/console/mine"
    assert f'href="{here}"' in carol.get("/console/requests/ff", {"Referer": here}).body


def test_a_cookie_of_garbage_is_no_session(console: ConsoleHarness) -> None:
    for value in ("pgs_" + "x" * 43, "pgs_" + "x" * 500, "not-a-secret", "pgw_token"):
        browser = console.client()
        browser.cookies["pgwarden_console"] = value
        answer = browser.get("/console/")
        assert (answer.status, answer.location.split("?")[0]) == (303, "/console/signin")
