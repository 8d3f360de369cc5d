"""A session's transcript in the console: shown to whoever may see the session, escaped.

The session is written to the audit log as the server writes it (its start record, then its
round trips from the real recorder), with hostile text in its statement and application name.
Its user, the target's approvers and the admins see it; anyone else gets the page of a session
that is not in the log. Statements arrive as text, bidi characters spelled out (row 47).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from proxy.audit.events import SessionEnded, SessionStarted
from proxy.audit.recorder import UPSTREAM_TYPES, SessionRecorder
from proxy.audit.redact import Redactor
from proxy.audit.shaping import Shaper
from proxy.wire import CommandComplete, Query, ReadyForQuery, TransactionStatus
from tests.unit.audit.helpers import frames_of
from tests.unit.web.harness import ConsoleHarness

SESSION = "a1b2c3d4e5f60718"
STATEMENT = "SELECT '</pre><script>alert(1)</script>' AS \u202ex"
APP = "<img src=x onerror=alert(2)>"


def write_session(console: ConsoleHarness, grant_id: str) -> None:
    clock, log = console.clock, console.audit
    recorder = SessionRecorder(SESSION, Shaper(Redactor()), clock.monotonic, lambda _d: 0)
    log.append(SessionStarted(
        SESSION, grant_id, "alice", "orders", "read-only", "pgw_read-only", "127.0.0.1:50432",
        False, APP, clock.now(), clock.now() + timedelta(minutes=30), 4242,
    ))  # fmt: skip
    log.append_many(recorder.client_frames(frames_of(Query(STATEMENT))))
    answers = frames_of(CommandComplete("SELECT 1"), ReadyForQuery(TransactionStatus.IDLE))
    recorder.upstream_frames([f for f in answers if f.type in UPSTREAM_TYPES])
    ended = SessionEnded(SESSION, "client_left", "", timedelta(seconds=1), 10, 20, 1)
    log.append_many([*recorder.finish(), ended])


@pytest.fixture
def grant(console: ConsoleHarness) -> str:
    rid = console.api.active_request("alice")
    write_session(console, rid)
    return rid


@pytest.mark.parametrize("user", ["alice", "carol", "erin"])
def test_those_who_may_see_the_session_read_its_statements_as_text(
    console: ConsoleHarness, grant: str, user: str
) -> None:
    browser = console.client(user)
    assert f"/console/sessions/{SESSION}" in browser.get(f"/console/requests/{grant}").body
    page = browser.get(f"/console/sessions/{SESSION}")
    assert page.status == 200, page.body[:500]
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page.body
    assert "AS &lt;U+202E&gt;x" in page.body
    assert "&lt;img src=x onerror=alert(2)&gt;" in page.body
    for raw in ("<script>alert", "<img", "\u202e"):
        assert raw not in page.body


@pytest.mark.parametrize("user", ["mallory", "frank", "bob"])
def test_anyone_else_gets_the_page_of_a_session_not_in_the_log(
    console: ConsoleHarness, grant: str, user: str
) -> None:
    browser = console.client(user)
    hidden = browser.get(f"/console/sessions/{SESSION}")
    missing = browser.get("/console/sessions/0123456789abcdef")
    assert (hidden.status, missing.status) == (404, 404)
    assert hidden.body.replace(SESSION, "ID") == missing.body.replace("0123456789abcdef", "ID")
    assert "alert(1)" not in hidden.body
