"""`pgwarden targets` and `pgwarden status` against a real API server (in-process): the tables
people read, `--json`, and the "did you mean" of `pgwarden request` with a misspelt name."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

from proxy.commands.overview import summary
from proxy.policy.models import AutoApproval, GroupName
from tests.fixtures.api import ORDERS, RO, ApiHarness, RunAs
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import PolicyBox


def _auto_approve_dev(policy: PolicyBox) -> None:
    orders = policy.current.targets[ORDERS]
    auto = AutoApproval(
        frozenset({RO}), timedelta(minutes=30), groups=frozenset({GroupName("dev")})
    )
    rule = replace(orders.approval, auto_approve=(auto,))
    orders = replace(orders, approval=rule, description="the shop")
    policy.current = replace(policy.current, targets={**policy.current.targets, ORDERS: orders})


def test_targets_as_a_table(as_user: RunAs, policy: PolicyBox) -> None:
    _auto_approve_dev(policy)
    status, out, err = as_user("alice", "targets")
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "TARGET   LEVEL       MAX  APPROVED BY            REASON    AUTO-APPROVED  DESCRIPTION",
        "billing  read-only   4h   1 of: finance (group)  required  -",
        "orders   read-only   4h   1 of: dba (group)      required  up to 30m      the shop",
        "orders   read-write  4h   2 of: dba (group)      required  -              the shop",
        "ask with: pgwarden request TARGET --access LEVEL --duration 30m --reason '...'",
    ]
    _, out, _ = as_user("carol", "targets")  # not in dev: no auto-approval for her
    assert "up to 30m" not in out


def test_targets_json_is_the_servers(as_user: RunAs) -> None:
    status, out, _ = as_user("mallory", "targets", "--json")
    assert status == 0
    document = json.loads(out)
    assert [t["name"] for t in document["targets"]] == ["billing", "orders"]
    assert document["targets"][0]["access_levels"][0]["approval"]["approver_groups"] == ["finance"]


def test_status_with_nothing_says_what_to_do(as_user: RunAs) -> None:
    status, out, _ = as_user("alice", "status")
    assert status == 0
    assert out.strip() == (
        "no active grants and no pending requests; what you may ask for: pgwarden targets"
    )


def test_status_shows_grants_with_time_left_and_pending_requests(
    api: ApiHarness, as_user: RunAs, clock: FakeClock
) -> None:
    active = api.active_request("alice")
    pending = api.create("alice", access_level="read-write").body["id"]
    clock.advance(timedelta(minutes=5))
    status, out, _ = as_user("alice", "status")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "active grants (1); connect with: pgwarden psql ID"
    assert lines[1].split() == ["ID", "TARGET", "LEVEL", "ENDS", "LEFT", "REASON"]
    assert lines[2].split() == [active, "orders", "read-only", "09:30:00", "25m", "incident", "42"]
    assert lines[4] == "pending requests (1)"
    assert lines[5].split() == ["ID", "TARGET", "LEVEL", "DURATION", "NEEDS", "LAPSES"]
    assert lines[6].split() == [pending, "orders", "read-write", "30m", "2", "from:", "dba",
                                "(group)", "in", "55m"]  # fmt: skip

    status, out, _ = as_user("alice", "status", "--json")
    document = json.loads(out)
    assert [r["id"] for r in document["active"]] == [active]
    assert document["active"][0]["remaining_seconds"] == 25 * 60
    assert [r["id"] for r in document["pending"]] == [pending]


def test_status_summary_of_an_expired_window_shows_no_negative_time() -> None:
    document = {
        "now": "2026-01-05T10:00:00Z", "pending": [],
        "active": [{"id": "ab", "target": "orders", "access_level": "read-only",
                    "ends_at": "2026-01-05T09:59:00Z", "reason": ""}],
    }  # fmt: skip
    assert summary(document).splitlines()[2].split() == [
        "ab",
        "orders",
        "read-only",
        "09:59:00",
        "0s",
    ]


def test_request_with_a_misspelt_name_suggests_the_right_one(as_user: RunAs) -> None:
    status, _, err = as_user("alice", "request", "Orders", "--access", "read-only",
                             "--duration", "30m", "--reason", "x")  # fmt: skip
    assert status == 1
    assert err.strip() == (
        'pgwarden: unknown target "Orders"; did you mean "orders"? '
        "(pgwarden targets lists what you may request)"
    )
    status, _, err = as_user("alice", "request", "orders", "--access", "readonly",
                             "--duration", "30m", "--reason", "x")  # fmt: skip
    assert status == 1
    assert err.strip() == (
        'pgwarden: target "orders" has no access level "readonly"; did you mean "read-only"? '
        "(pgwarden targets lists what you may request)"
    )
