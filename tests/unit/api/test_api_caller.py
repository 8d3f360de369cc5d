"""`GET /api/v1/targets` and `GET /api/v1/status` through a real ApiServer; and the "did you mean"
of an unknown target or access level."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from proxy.grants.rules import requestable
from proxy.policy.models import AutoApproval, GroupName, UserName
from tests.fixtures.api import BILLING, ORDERS, RO, RW, ApiHarness, make_policy
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import PolicyBox


def _auto_approve(policy: PolicyBox, *rules: AutoApproval) -> None:
    """Give `orders`' rule (read-only and the target's default) these auto-approval rules."""
    orders = policy.current.targets[ORDERS]
    rule = replace(orders.approval, auto_approve=rules)
    targets = {**policy.current.targets, ORDERS: replace(orders, approval=rule)}
    policy.current = replace(policy.current, targets=targets)


def _levels(api: ApiHarness, user: str) -> dict[tuple[str, str], dict[str, object]]:
    reply = api.call("GET", "/api/v1/targets", user=user)
    assert reply.status == 200
    return {(t["name"], lv["name"]): lv for t in reply.body["targets"] for lv in t["access_levels"]}


def test_targets_shows_levels_limits_and_approvers_and_nothing_secret(api: ApiHarness) -> None:
    reply = api.call("GET", "/api/v1/targets", user="alice")
    assert reply.status == 200
    assert [t["name"] for t in reply.body["targets"]] == ["billing", "orders"]
    orders = reply.body["targets"][1]
    assert orders == {
        "name": "orders", "description": "", "require_client_tls": False,
        "access_levels": [
            {"name": "read-only", "max_duration": "4h", "max_duration_seconds": 14400,
             "approval": {"required": 1, "approver_groups": ["dba"], "approver_users": [],
                          "require_reason": True},
             "auto_approval": None},
            {"name": "read-write", "max_duration": "4h", "max_duration_seconds": 14400,
             "approval": {"required": 2, "approver_groups": ["dba"], "approver_users": [],
                          "require_reason": True},
             "auto_approval": None},
        ],
    }  # fmt: skip
    text = json.dumps(reply.body)
    for secret in ("db.internal", "5432", "pgw_read", "PGW_UNUSED", "upstream", "role"):
        assert secret not in text


@pytest.mark.parametrize("user", ["alice", "carol", "erin", "mallory"])
def test_targets_lists_exactly_what_the_caller_may_request(api: ApiHarness, user: str) -> None:
    """Requesting is open to everyone in the policy (approval rules say who approves, not who
    asks), admins and people in no group included: every level listed is accepted on create."""
    listed = _levels(api, user)
    assert set(listed) == {("orders", RO), ("orders", RW), ("billing", RO)}
    for target, level in listed:
        reply = api.create(user, target=target, access_level=level)
        assert reply.status == 201, reply.body


def test_someone_outside_the_policy_may_request_nothing(api: ApiHarness, policy: PolicyBox) -> None:
    assert requestable(policy.current, UserName("zoe")) == ()
    api.token("mallory")
    users = {u: p for u, p in policy.current.users.items() if u != "mallory"}
    policy.current = replace(policy.current, users=users)
    reply = api.call("GET", "/api/v1/targets", user="mallory")
    assert (reply.status, reply.code) == (401, "unauthenticated")


def test_auto_approval_is_shown_only_to_whom_it_applies(api: ApiHarness, policy: PolicyBox) -> None:
    _auto_approve(
        policy,
        AutoApproval(frozenset({RO}), timedelta(minutes=30), groups=frozenset({GroupName("dev")})),
        AutoApproval(frozenset({RO}), timedelta(hours=9), users=frozenset({UserName("frank")})),
    )
    alice = _levels(api, "alice")
    assert alice[("orders", RO)]["auto_approval"] == {
        "max_duration": "30m", "max_duration_seconds": 1800,
    }  # fmt: skip
    assert alice[("orders", RW)]["auto_approval"] is None  # the rule names read-only only
    assert alice[("billing", RO)]["auto_approval"] is None
    for outsider in ("carol", "erin", "mallory"):
        assert _levels(api, outsider)[("orders", RO)]["auto_approval"] is None
    # frank's rule allows 9h; the level allows 4h, and that is what he is shown
    assert _levels(api, "frank")[("orders", RO)]["auto_approval"] == {
        "max_duration": "4h", "max_duration_seconds": 14400,
    }  # fmt: skip
    assert api.create("alice", duration="30m").body["state"] == "active"  # it does apply


def test_targets_follows_a_policy_reload(api: ApiHarness, policy: PolicyBox) -> None:
    policy.current = replace(policy.current, targets={BILLING: make_policy().targets[BILLING]})
    assert set(_levels(api, "alice")) == {("billing", RO)}


def test_status_shows_only_my_pending_requests_and_active_grants(
    api: ApiHarness, clock: FakeClock
) -> None:
    active = api.active_request("alice")
    pending = api.create("alice", access_level="read-write").body["id"]
    cancelled = api.create("alice").body["id"]
    api.act("alice", cancelled, "cancel")
    api.create("bob")  # carol may see it as an approver; it is not alice's, nor carol's
    clock.advance(timedelta(minutes=10))

    reply = api.call("GET", "/api/v1/status", user="alice")
    assert reply.status == 200
    body = reply.body
    assert (body["user"], body["now"]) == ("alice", "2026-01-05T09:10:00Z")
    assert [r["id"] for r in body["active"]] == [active]
    assert body["active"][0]["remaining_seconds"] == 20 * 60
    assert [r["id"] for r in body["pending"]] == [pending]
    assert body["pending"][0]["approval"]["missing"] == 2
    assert body["pending"][0]["lapses_at"] == "2026-01-05T10:00:00Z"

    carol = api.call("GET", "/api/v1/status", user="carol").body
    assert (carol["active"], carol["pending"]) == ([], [])


def test_status_and_targets_take_no_parameters_and_need_a_token(api: ApiHarness) -> None:
    for path in ("/api/v1/status", "/api/v1/targets"):
        assert api.call("GET", path).status == 401
        reply = api.call("GET", f"{path}?user=bob", user="alice")
        assert (reply.status, reply.code) == (400, "invalid_query")


# --- did you mean -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "wanted"),
    [
        ({"target": "Orders"}, 'unknown target "Orders"; did you mean "orders"?'),
        ({"target": "biling"}, 'unknown target "biling"; did you mean "billing"?'),
        ({"target": "zzz"}, 'unknown target "zzz" (pgwarden targets'),
        ({"access_level": "read_only"},
         'target "orders" has no access level "read_only"; did you mean "read-only"?'),
        ({"access_level": "admin"}, 'target "orders" has no access level "admin" (pgwarden'),
    ],
)  # fmt: skip
def test_an_unknown_name_suggests_the_closest_one_may_request(
    api: ApiHarness, fields: dict[str, str], wanted: str
) -> None:
    reply = api.create("alice", **fields)
    assert (reply.status, reply.code) == (400, "invalid_request")
    assert reply.message.startswith(wanted)
    assert reply.message.endswith(" (pgwarden targets lists what you may request)")


def test_a_suggestion_never_names_a_level_of_another_target(api: ApiHarness) -> None:
    reply = api.create("alice", target="billing", access_level="read-writ")  # orders has it
    assert reply.message == (
        'target "billing" has no access level "read-writ" '
        "(pgwarden targets lists what you may request)"
    )
