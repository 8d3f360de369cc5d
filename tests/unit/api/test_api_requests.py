"""`/api/v1/requests...`: every endpoint's happy path, and who may see and do what through it."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from urllib.parse import unquote, urlsplit

import pytest

from proxy.addresses import ListenAddress
from tests.fixtures.api import ApiHarness
from tests.fixtures.clock import FakeClock

# --- create -----------------------------------------------------------------------------------


def test_a_request_is_created_pending_with_what_it_needs(api: ApiHarness) -> None:
    reply = api.create(duration="2h", reason="incident 42")
    assert reply.status == 201
    body = reply.body
    assert body["state"] == "pending"
    assert (body["requester"], body["target"], body["access_level"]) == (
        "alice", "orders", "read-only",
    )  # fmt: skip
    assert (body["duration"], body["duration_seconds"], body["clamped"]) == ("2h", 7200, False)
    assert body["created_at"] == "2026-01-05T09:00:00Z"
    assert body["lapses_at"] == "2026-01-05T10:00:00Z"
    assert body["approval"] == {
        "required": 1, "received": 0, "missing": 1, "approver_users": [],
        "approver_groups": ["dba"],
    }  # fmt: skip
    assert len(body["id"]) == 16


def test_a_duration_above_the_maximum_is_clamped_and_says_so(api: ApiHarness) -> None:
    body = api.create(duration="9h").body
    assert (body["requested_duration"], body["duration"], body["clamped"]) == ("9h", "4h", True)


@pytest.mark.parametrize(
    ("fields", "code", "wanted"),
    [
        ({"target": "nope"}, "invalid_request", 'unknown target "nope" (pgwarden targets'),
        ({"access_level": "admin"}, "invalid_request", 'has no access level "admin"'),
        ({"reason": ""}, "invalid_request", "a reason is required"),
        ({"duration": "90"}, "invalid_body", "duration: needs a unit"),
        ({"duration": "31d"}, "invalid_body", "duration: 31d is longer than the maximum"),
        ({"duration": "-5m"}, "invalid_body", "duration: must be positive"),
        ({"target": "bad name!"}, "invalid_body", "target: 'bad name!' is not a valid name"),
        ({"reason": "x" * 2001}, "invalid_body", "reason: is longer than 2000 characters"),
        ({"reason": "ok\x1b[2Jgone"}, "invalid_body", "reason: must be one line"),
        ({"reason": "a\u202etxt.exe"}, "invalid_body", "reason: must be one line"),
    ],
)
def test_a_bad_request_is_refused_with_the_reason(
    api: ApiHarness, fields: dict[str, str], code: str, wanted: str
) -> None:
    reply = api.create(**fields)
    assert (reply.status, reply.code) == (400, code)
    assert wanted in reply.message


# --- who sees what -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("viewer", "sees"),
    [("alice", True), ("carol", True), ("dave", True), ("erin", True),
     ("bob", False), ("frank", False), ("mallory", False)],
)  # fmt: skip
def test_a_request_is_visible_to_its_requester_its_approvers_and_admins_only(
    api: ApiHarness, viewer: str, sees: bool
) -> None:
    request_id = api.create().body["id"]
    reply = api.call("GET", f"/api/v1/requests/{request_id}", user=viewer)
    if sees:
        assert reply.status == 200
        assert reply.body["id"] == request_id
    else:  # exactly what an unknown id gets: ids cannot be probed
        unknown = api.call("GET", "/api/v1/requests/0123456789abcdef", user=viewer)
        assert (reply.status, reply.code) == (unknown.status, unknown.code) == (404, "not_found")
        assert reply.message == f"no request {request_id}"


def test_the_list_shows_each_caller_only_what_they_may_see(api: ApiHarness) -> None:
    mine = api.create("alice").body["id"]
    bobs = api.create("bob").body["id"]
    billing = api.create("alice", target="billing").body["id"]

    def listed(user: str) -> set[str]:
        reply = api.call("GET", "/api/v1/requests", user=user)
        assert reply.status == 200
        return {r["id"] for r in reply.body["requests"]}

    assert listed("alice") == {mine, billing}
    assert listed("bob") == {bobs}
    assert listed("carol") == {mine, bobs}  # orders approver, not billing
    assert listed("frank") == {billing}
    assert listed("erin") == {mine, bobs, billing}
    assert listed("mallory") == set()


def test_the_list_filters_by_state_newest_first_and_is_bounded(
    api: ApiHarness, clock: FakeClock
) -> None:
    first = api.create().body["id"]
    clock.advance(1)
    second = api.create().body["id"]
    api.act("carol", second, "approve")
    clock.advance(1)
    third = api.create().body["id"]
    everything = api.call("GET", "/api/v1/requests", user="alice").body["requests"]
    assert [r["id"] for r in everything] == [third, second, first]
    pending = api.call("GET", "/api/v1/requests?state=pending", user="alice").body["requests"]
    assert [r["id"] for r in pending] == [third, first]
    one = api.call("GET", "/api/v1/requests?limit=1", user="alice").body["requests"]
    assert [r["id"] for r in one] == [third]


def test_the_list_shows_a_lapsed_request_as_lapsed(api: ApiHarness, clock: FakeClock) -> None:
    request_id = api.create().body["id"]
    clock.advance(timedelta(hours=1))
    listed = api.call("GET", "/api/v1/requests", user="alice").body["requests"]
    assert [(r["id"], r["state"]) for r in listed] == [(request_id, "lapsed")]


def test_show_has_the_approvals_and_the_history(api: ApiHarness) -> None:
    request_id = api.create(access_level="read-write").body["id"]
    api.act("carol", request_id, "approve", {"comment": "looks fine"})
    body = api.call("GET", f"/api/v1/requests/{request_id}", user="alice").body
    assert [(a["approver"], a["comment"]) for a in body["approvals"]] == [("carol", "looks fine")]
    assert [(h["action"], h["actor"], h["to_state"]) for h in body["history"]] == [
        ("create", "alice", "pending"),
        ("approve", "carol", "pending"),
    ]
    assert body["approval"]["missing"] == 1
    assert body["approval"]["received"] == 1


# --- approve -----------------------------------------------------------------------------------


def test_an_approver_approves_and_the_request_becomes_active(api: ApiHarness) -> None:
    request_id = api.create().body["id"]
    reply = api.act("carol", request_id, "approve", {"comment": "ok"})
    assert reply.status == 200
    assert reply.body["state"] == "active"
    assert reply.body["ends_at"] == "2026-01-05T09:30:00Z"


def test_two_distinct_approvers_are_needed_where_the_policy_says_so(api: ApiHarness) -> None:
    request_id = api.create(access_level="read-write").body["id"]
    first = api.act("carol", request_id, "approve").body
    assert (first["state"], first["approval"]["missing"]) == ("pending", 1)
    assert api.act("carol", request_id, "approve").body["state"] == "pending"  # a double click
    assert api.act("dave", request_id, "approve").body["state"] == "active"


@pytest.mark.parametrize("requester", ["alice", "carol", "erin"])
def test_self_approval_is_refused_with_403_for_everyone(api: ApiHarness, requester: str) -> None:
    request_id = api.create(requester).body["id"]
    reply = api.act(requester, request_id, "approve")
    assert (reply.status, reply.code) == (403, "self_approval")
    assert f"you cannot approve your own request {request_id}" in reply.message
    assert "it needs 1 more approval from: dba (group)" in reply.message
    assert api.call("GET", f"/api/v1/requests/{request_id}", user=requester).body["state"] == (
        "pending"
    )


def test_an_admin_who_is_no_approver_may_not_approve(api: ApiHarness) -> None:
    request_id = api.create().body["id"]
    reply = api.act("erin", request_id, "approve")
    assert (reply.status, reply.code) == (403, "not_permitted")
    assert "erin is not an approver" in reply.message


def test_a_stranger_cannot_approve_or_learn_that_the_request_exists(api: ApiHarness) -> None:
    request_id = api.create().body["id"]
    for user in ("bob", "frank", "mallory"):
        reply = api.act(user, request_id, "approve")
        assert (reply.status, reply.code) == (404, "not_found")


def test_approving_a_cancelled_request_is_a_conflict(api: ApiHarness) -> None:
    request_id = api.create().body["id"]
    assert api.act("alice", request_id, "cancel").body["state"] == "cancelled"
    reply = api.act("carol", request_id, "approve")
    assert (reply.status, reply.code) == (409, "invalid_state")
    assert "is cancelled; it can no longer be approved" in reply.message


# --- deny, cancel, revoke ----------------------------------------------------------------------


def test_deny_needs_a_reason_and_an_approver(api: ApiHarness) -> None:
    request_id = api.create().body["id"]
    assert api.act("carol", request_id, "deny", {}).code == "invalid_body"
    assert api.act("carol", request_id, "deny", {"reason": "  "}).code == "invalid_body"
    assert api.act("alice", request_id, "deny", {"reason": "no"}).status == 403
    reply = api.act("carol", request_id, "deny", {"reason": "not during the freeze"})
    assert (reply.status, reply.body["state"]) == (200, "denied")
    assert reply.body["close_reason"] == "not during the freeze"
    assert reply.body["closed_by"] == "carol"


def test_only_the_requester_cancels(api: ApiHarness) -> None:
    request_id = api.create().body["id"]
    assert api.act("carol", request_id, "cancel").status == 403
    assert api.act("erin", request_id, "cancel").status == 403
    assert api.act("alice", request_id, "cancel").body["state"] == "cancelled"


@pytest.mark.parametrize("who", ["alice", "carol", "erin"])
def test_the_requester_an_approver_or_an_admin_revokes(api: ApiHarness, who: str) -> None:
    request_id = api.active_request()
    reply = api.act(who, request_id, "revoke", {"reason": "done"})
    assert (reply.status, reply.body["state"], reply.body["closed_by"]) == (200, "revoked", who)


def test_revoking_twice_is_a_conflict_and_strangers_get_404(api: ApiHarness) -> None:
    request_id = api.active_request()
    assert api.act("bob", request_id, "revoke").status == 404
    assert api.act("carol", request_id, "revoke").status == 200
    reply = api.act("carol", request_id, "revoke")
    assert (reply.status, reply.code) == (409, "invalid_state")


# --- credentials -------------------------------------------------------------------------------


def test_the_requester_gets_a_credential_with_a_ready_connection_string(api: ApiHarness) -> None:
    request_id = api.active_request()
    reply = api.act("alice", request_id, "credentials")
    assert reply.status == 201
    body = reply.body
    assert (body["user"], body["host"], body["port"], body["database"]) == (
        "alice", "127.0.0.1", 6432, "orders",
    )  # fmt: skip
    assert body["expires_at"] == "2026-01-05T09:30:00Z"
    assert len(body["password"]) >= 20
    uri = urlsplit(body["dsn"])
    assert (uri.scheme, uri.hostname, uri.port, uri.path) == (
        "postgresql",
        "127.0.0.1",
        6432,
        "/orders",
    )
    assert (uri.username, unquote(uri.password or "")) == ("alice", body["password"])
    assert reply.headers["cache-control"] == "no-store"


def test_a_wildcard_listen_address_is_never_handed_out(api: ApiHarness) -> None:
    api.context.proxy = replace(api.context.proxy, listen=ListenAddress("0.0.0.0", 6432))
    request_id = api.active_request()
    path = f"/api/v1/requests/{request_id}/credentials"
    reply = api.call("POST", path, user="alice", headers={"Host": "db-gw.example:8080"})
    assert (reply.body["host"], reply.body["port"]) == ("db-gw.example", 6432)
    api.context.proxy = replace(api.context.proxy, public=ListenAddress("pg.example.com", 5433))
    reply = api.act("alice", request_id, "credentials")
    assert (reply.body["host"], reply.body["port"]) == ("pg.example.com", 5433)


def test_only_the_requester_gets_the_credential(api: ApiHarness) -> None:
    request_id = api.active_request()
    reply = api.act("carol", request_id, "credentials")
    assert (reply.status, reply.code) == (403, "not_permitted")
    assert "only alice can get the credential" in reply.message
    assert api.act("bob", request_id, "credentials").status == 404


def test_a_pending_request_has_no_credential_and_the_error_says_what_it_needs(
    api: ApiHarness,
) -> None:
    request_id = api.create(access_level="read-write").body["id"]
    api.act("carol", request_id, "approve")
    reply = api.act("alice", request_id, "credentials")
    assert (reply.status, reply.code) == (409, "invalid_state")
    assert reply.message == (
        f"request {request_id} is pending; it needs 1 more approval from: dba (group)"
    )


def test_an_expired_grant_has_no_credential(api: ApiHarness, clock: FakeClock) -> None:
    request_id = api.active_request()
    clock.advance(timedelta(minutes=30))
    reply = api.act("alice", request_id, "credentials")
    assert (reply.status, reply.code) == (409, "invalid_state")
    assert "expired" in reply.message
