"""A form sent after its request changed: a clear 409 on the page, never a second effect.

The approver opened the request's page, then someone else withdrew, denied or approved it up to
its quorum before the form was sent; or the same form went twice (a double click, a resubmit
after going back). The lifecycle decides, as for the API: exactly one approval is stored.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.unit.web.harness import ConsoleHarness

MEANWHILE: dict[str, tuple[Callable[[ConsoleHarness, str], object], str]] = {
    "withdrawn": (lambda c, rid: c.api.act("alice", rid, "cancel"), "is cancelled"),
    "denied": (lambda c, rid: c.api.act("dave", rid, "deny", {"reason": "no"}), "is denied"),
    "approved by another": (lambda c, rid: c.api.act("dave", rid, "approve"), "is active"),
}


@pytest.mark.parametrize("change", MEANWHILE)
def test_approving_a_request_that_changed_meanwhile_is_a_clear_409(
    console: ConsoleHarness, change: str
) -> None:
    act, state = MEANWHILE[change]
    rid = console.pending()
    carol = console.client("carol")
    assert f"/console/requests/{rid}/approve" in carol.get(f"/console/requests/{rid}").body
    act(console, rid)
    before = console.approvals(rid)
    answer = carol.post(f"/console/requests/{rid}/approve", {"comment": "late"})
    assert answer.status == 409, answer.body[:500]
    assert f"request {rid} {state}; it can no longer be approved" in answer.body
    assert console.approvals(rid) == before
    assert len(before) == (1 if change == "approved by another" else 0)


def test_a_double_submitted_approval_counts_once(console: ConsoleHarness) -> None:
    rid = console.pending(level="read-write")  # two approvals needed: the second is a no-op
    carol = console.client("carol")
    page = carol.get(f"/console/requests/{rid}")
    for _ in range(2):
        answer = carol.post(f"/console/requests/{rid}/approve", {"comment": "ok"}, csrf=page.csrf)
        assert (answer.status, answer.location) == (303, f"/console/requests/{rid}?done=approved")
    assert [a.approver for a in console.approvals(rid)] == ["carol"]
    assert len(console.records("request.approved")) == 1
    assert console.state(rid) == "pending"


def test_a_double_submit_that_reached_the_quorum_the_first_time_says_so(
    console: ConsoleHarness,
) -> None:
    rid = console.pending()
    carol = console.client("carol")
    page = carol.get(f"/console/requests/{rid}")
    first = carol.post(f"/console/requests/{rid}/approve", csrf=page.csrf)
    second = carol.post(f"/console/requests/{rid}/approve", csrf=page.csrf)
    assert (first.status, second.status) == (303, 409)
    assert "is active; it can no longer be approved" in second.body
    assert len(console.approvals(rid)) == 1
    assert len(console.records("grant.activated")) == 1


@pytest.mark.parametrize(("verb", "fields"), [("deny", {"reason": "no"}), ("cancel", {})])
def test_denying_or_withdrawing_twice_is_a_409_not_a_second_record(
    console: ConsoleHarness, verb: str, fields: dict[str, str]
) -> None:
    rid = console.pending()
    browser = console.client("carol" if verb == "deny" else "alice")
    page = browser.get(f"/console/requests/{rid}")
    first = browser.post(f"/console/requests/{rid}/{verb}", fields, csrf=page.csrf)
    second = browser.post(f"/console/requests/{rid}/{verb}", fields, csrf=page.csrf)
    assert (first.status, second.status) == (303, 409)
    kind = {"deny": "request.denied", "cancel": "request.cancelled"}[verb]
    assert len(console.records(kind)) == 1
