"""`/api/v1/sessions`: who sees which live sessions, and who may end one (and how it ends)."""

from __future__ import annotations

import pytest

from proxy.session.session import EndReason
from tests.fixtures.api import ApiHarness


def _listed(api: ApiHarness, user: str) -> set[str]:
    reply = api.call("GET", "/api/v1/sessions", user=user)
    assert reply.status == 200
    return {s["id"] for s in reply.body["sessions"]}


def test_sessions_are_listed_for_their_user_their_approvers_and_admins(api: ApiHarness) -> None:
    api.add_session("alice", "orders", session_id="a1")
    api.add_session("bob", "orders", session_id="b1")
    api.add_session("alice", "billing", session_id="a2")
    assert _listed(api, "alice") == {"a1", "a2"}
    assert _listed(api, "bob") == {"b1"}
    assert _listed(api, "carol") == {"a1", "b1"}
    assert _listed(api, "frank") == {"a2"}
    assert _listed(api, "erin") == {"a1", "b1", "a2"}
    assert _listed(api, "mallory") == set()


def test_a_session_is_shown_without_secrets(api: ApiHarness) -> None:
    api.add_session("alice", session_id="a1", request_id="feed")
    (shown,) = api.call("GET", "/api/v1/sessions", user="alice").body["sessions"]
    assert shown == {
        "id": "a1", "user": "alice", "target": "orders", "access_level": "read-only",
        "request_id": "feed", "client_address": "127.0.0.1:5555", "client_tls": False,
        "application_name": "psql", "started_at": "2026-01-05T09:00:00Z",
        "ends_at": "2026-01-05T09:30:00Z",
    }  # fmt: skip


@pytest.mark.parametrize("killer", ["carol", "erin"])
def test_an_approver_or_an_admin_ends_a_session_with_a_reason(api: ApiHarness, killer: str) -> None:
    session = api.add_session("alice", session_id="a1")
    reply = api.call("DELETE", "/api/v1/sessions/a1", {"reason": "runaway query"}, user=killer)
    assert reply.status == 200
    assert reply.body["ended"] is True
    assert reply.body["session"]["id"] == "a1"
    assert session.ending is not None
    assert session.ending.reason is EndReason.KILLED
    assert session.ending.message == ("pgwarden: session ended by an administrator: runaway query")
    assert session.ending.detail == f"killed by {killer}: runaway query"
    assert _listed(api, "erin") == set()


def test_killing_without_a_body_works_and_uses_the_plain_message(api: ApiHarness) -> None:
    session = api.add_session("alice", session_id="a1")
    assert api.call("DELETE", "/api/v1/sessions/a1", user="carol").status == 200
    assert session.ending is not None
    assert session.ending.message == "pgwarden: session ended by an administrator"


def test_the_user_cannot_kill_their_own_session_and_strangers_cannot_see_it(
    api: ApiHarness,
) -> None:
    session = api.add_session("alice", session_id="a1")
    own = api.call("DELETE", "/api/v1/sessions/a1", user="alice")
    assert (own.status, own.code) == (403, "not_permitted")
    assert "just disconnect" in own.message
    for stranger in ("bob", "frank", "mallory"):
        reply = api.call("DELETE", "/api/v1/sessions/a1", user=stranger)
        assert (reply.status, reply.code) == (404, "not_found")
    assert session.ending is None


@pytest.mark.parametrize("session_id", ["deadbeef", "NOT-HEX", "a1%2F..", "x" * 80])
def test_an_unknown_session_is_404(api: ApiHarness, session_id: str) -> None:
    reply = api.call("DELETE", f"/api/v1/sessions/{session_id}", user="erin")
    assert (reply.status, reply.code) == (404, "not_found")


def test_sessions_takes_no_query_parameters(api: ApiHarness) -> None:
    reply = api.call("GET", "/api/v1/sessions?user=alice", user="erin")
    assert (reply.status, reply.code) == (400, "invalid_query")
