"""The console's authorization is the API's, by URL too (SECURITY.md row 47).

Nobody approves their own request (admins neither), and the page does not offer it; a request one
may not see is answered as one that does not exist; an approver of one target cannot act on
another's; a person in two of a rule's approver groups counts once. Each refusal by URL gives the
status the API gives the same call, and nothing changes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from proxy.policy.models import ApprovalRule, GroupName, TargetName, User
from tests.fixtures.grants import PolicyBox
from tests.unit.web.harness import ConsoleHarness

ORDERS = TargetName("orders")
UNKNOWN = "0123456789abcdef"  # shaped like a request id


def add_groups(policy: PolicyBox, user: str, *groups: str) -> None:
    current = policy.current
    person = current.users[user]  # type: ignore[index]
    more = person.groups | {GroupName(g) for g in groups}
    policy.current = replace(current, users={**current.users, person.name: User(person.name, more)})


@pytest.mark.parametrize("requester", ["alice", "erin", "carol as an admin"])
def test_nobody_approves_their_own_request_by_url_either(
    console: ConsoleHarness, requester: str
) -> None:
    user = requester.split(maxsplit=1)[0]
    if requester == "carol as an admin":
        add_groups(console.policy, "carol", "admins")  # an approver of orders and an admin
    rid = console.pending(user)
    browser = console.client(user)
    page = browser.get(f"/console/requests/{rid}")
    assert page.status == 200
    assert f"/console/requests/{rid}/approve" not in page.body
    assert rid not in browser.get("/console/").body  # nor in the inbox
    answer = browser.post(f"/console/requests/{rid}/approve", {"comment": "me"})
    assert answer.status == 403
    assert "cannot approve your own request" in answer.body
    assert console.approvals(rid) == ()
    assert console.records("request.approved") == []
    assert console.api.act(user, rid, "approve").status == 403  # as the API says


# (who, verb, on an active grant): refused by URL; the API refuses the same call the same way.
REFUSALS = [
    ("mallory", "approve", False), ("mallory", "deny", False), ("mallory", "cancel", False),
    ("mallory", "revoke", True), ("mallory", "credential", True),
    ("frank", "approve", False), ("frank", "deny", False), ("frank", "revoke", True),
    ("bob", "approve", False), ("bob", "cancel", False), ("bob", "credential", True),
    ("carol", "cancel", False), ("carol", "credential", True),
]  # fmt: skip
API_VERB = {"credential": "credentials"}
FIELDS = {"approve": {"comment": "sure"}, "deny": {"reason": "no"}, "revoke": {"reason": "done"}}


@pytest.mark.parametrize(("user", "verb", "active"), REFUSALS)
def test_what_the_api_refuses_the_console_refuses_by_url(
    console: ConsoleHarness, user: str, verb: str, active: bool
) -> None:
    rid = console.api.active_request("alice") if active else console.pending()
    before = (console.state(rid), console.approvals(rid))
    browser = console.client(user)
    browser.get("/console/")
    answer = browser.post(f"/console/requests/{rid}/{verb}", FIELDS.get(verb))
    api = console.api.act(user, rid, API_VERB.get(verb, verb), FIELDS.get(verb))
    assert answer.status == api.status, (answer.body[:500], api.body)
    assert answer.status in (403, 404)
    assert (console.state(rid), console.approvals(rid)) == before
    assert len(console.records("request.approved")) == (1 if active else 0)
    assert console.records("credential.issued") == []


@pytest.mark.parametrize("user", ["mallory", "frank", "bob"])
def test_a_request_one_may_not_see_is_answered_as_a_missing_one(
    console: ConsoleHarness, user: str
) -> None:
    rid = console.pending(reason="the secret migration")
    browser = console.client(user)
    hidden, missing = (
        browser.get(f"/console/requests/{rid}"),
        browser.get(f"/console/requests/{UNKNOWN}"),
    )
    assert (hidden.status, missing.status) == (404, 404)
    assert hidden.body.replace(rid, "ID") == missing.body.replace(UNKNOWN, "ID")
    assert "secret migration" not in browser.get("/console/").body


def test_a_person_in_two_approver_groups_counts_once(console: ConsoleHarness) -> None:
    add_groups(console.policy, "carol", "finance")
    current = console.policy.current
    two_groups = ApprovalRule(approver_groups=frozenset({GroupName("dba"), GroupName("finance")}),
                              required_approvals=2)  # fmt: skip
    orders = replace(current.targets[ORDERS], approval=two_groups)
    console.policy.current = replace(current, targets={**current.targets, ORDERS: orders})
    rid = console.pending()
    carol = console.client("carol")
    carol.get(f"/console/requests/{rid}")
    assert carol.post(f"/console/requests/{rid}/approve").status == 303
    page = carol.get(f"/console/requests/{rid}")
    assert "1 received so far" in page.body
    assert f"/console/requests/{rid}/approve" not in page.body
    assert rid not in carol.get("/console/").body
    assert carol.post(f"/console/requests/{rid}/approve", csrf=page.csrf).status == 303  # a no-op
    assert (console.state(rid), len(console.approvals(rid))) == ("pending", 1)
    frank = console.client("frank")
    frank.get(f"/console/requests/{rid}")
    assert frank.post(f"/console/requests/{rid}/approve").status == 303
    assert (console.state(rid), len(console.approvals(rid))) == ("active", 2)


def test_an_admin_who_approves_nothing_may_deny_but_not_approve(console: ConsoleHarness) -> None:
    rid = console.pending()
    erin = console.client("erin")
    page = erin.get(f"/console/requests/{rid}")
    assert f"/console/requests/{rid}/approve" not in page.body
    assert f"/console/requests/{rid}/deny" in page.body
    assert erin.post(f"/console/requests/{rid}/approve").status == 403
    assert console.approvals(rid) == ()
    denied = erin.post(f"/console/requests/{rid}/deny", {"reason": "not today"}, csrf=page.csrf)
    assert denied.status == 303
    assert console.state(rid) == "denied"
