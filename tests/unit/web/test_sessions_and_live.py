"""Ending a live session from the console, and pages that know when they changed.

Kill goes the API's way (`end_session`): an approver of the target or an admin ends it; the
session's own user may see it but not end it (403, as the API); someone who may not see it is
told what they would be told of a session that does not exist, and nothing is ended. A session
that ended while the page was open is said to be gone, not an error. `/console/changes` moves
when a request changes anywhere (the state store's counter) and when a session the person may
see begins, and stays put otherwise.
"""

from __future__ import annotations

from tests.unit.web.harness import Client, ConsoleHarness, RelayedSession


def live_session(console: ConsoleHarness, busy: bool = False) -> RelayedSession:
    return console.add_session(console.api.active_request("alice"), busy=busy)


def test_an_approver_kills_a_session_with_a_reason(console: ConsoleHarness) -> None:
    session = live_session(console)
    carol = console.client("carol")
    assert f"/console/sessions/{session.session_id}/kill" in carol.get("/console/sessions").body
    answer = carol.post(f"/console/sessions/{session.session_id}/kill", {"reason": "too slow"})
    assert (answer.status, answer.location) == (303, "/console/sessions?done=killed")
    assert session.ending is not None
    assert "too slow" in session.ending.message
    assert "killed by carol: too slow" in session.ending.detail


def test_killing_a_session_that_already_ended_says_so(console: ConsoleHarness) -> None:
    session = live_session(console)
    carol = console.client("carol")
    carol.get("/console/sessions")  # the Kill button is on screen...
    console.end_session(session)  # ...when the session ends
    answer = carol.post(f"/console/sessions/{session.session_id}/kill", {"reason": "x"})
    assert (answer.status, answer.location) == (303, "/console/sessions?done=gone")
    page = carol.get(answer.location)
    assert "That session had already ended." in page.body
    assert session.ending is None


def test_the_sessions_page_says_which_session_is_running_a_query(
    console: ConsoleHarness,
) -> None:
    live_session(console, busy=True)
    assert "running a query" in console.client("carol").get("/console/sessions").body


def test_the_sessions_own_user_may_not_end_it(console: ConsoleHarness) -> None:
    session = live_session(console)
    alice = console.client("alice")
    listed = alice.get("/console/sessions")
    assert session.session_id in listed.body
    assert f"/console/sessions/{session.session_id}/kill" not in listed.body  # no button
    answer = alice.post(f"/console/sessions/{session.session_id}/kill", {"reason": "me"})
    api = console.api.call("DELETE", f"/api/v1/sessions/{session.session_id}", user="alice")
    assert (answer.status, api.status) == (403, 403)
    assert "only an admin or an approver of orders" in answer.body
    assert session.ending is None


def test_a_session_one_may_not_see_is_not_ended_nor_shown(console: ConsoleHarness) -> None:
    session = live_session(console)
    for user in ("mallory", "frank", "bob"):
        browser = console.client(user)
        assert session.session_id not in browser.get("/console/sessions").body
        answer = browser.post(f"/console/sessions/{session.session_id}/kill", {"reason": "x"})
        unknown = browser.post("/console/sessions/0123abcd/kill", {"reason": "x"})
        # As for a session that does not exist (the API's 404): nothing tells them it does.
        api = console.api.call("DELETE", f"/api/v1/sessions/{session.session_id}", user=user)
        assert api.status == 404
        assert (answer.status, answer.location) == (unknown.status, unknown.location)
        assert answer.location == "/console/sessions?done=gone"
        assert browser.get(f"/console/sessions/{session.session_id}").status == 404
    assert session.ending is None


def version(browser: Client) -> str:
    answer = browser.get("/console/changes")
    assert answer.status == 200
    return str(answer.json()["version"])


def test_changes_move_when_a_request_is_made_elsewhere(console: ConsoleHarness) -> None:
    carol = console.client("carol")
    before = version(carol)
    assert version(carol) == before  # nothing happened: nothing moved
    console.pending("bob")  # through the API: another browser, another replica's doing
    after = version(carol)
    assert after != before
    assert version(carol) == after


def test_changes_move_when_a_visible_session_begins_and_only_then(
    console: ConsoleHarness,
) -> None:
    rid = console.api.active_request("alice")
    browsers = {user: console.client(user) for user in ("alice", "carol", "bob")}
    seen = {user: version(browser) for user, browser in browsers.items()}
    console.add_session(rid)
    assert version(browsers["alice"]) != seen["alice"]  # her own
    assert version(browsers["carol"]) != seen["carol"]  # an approver of orders
    assert version(browsers["bob"]) == seen["bob"]  # not his to see
