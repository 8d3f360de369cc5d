"""Concurrent approvals of one request on different replicas: the quorum is exact.

Read-write access needs two approvals (tests/fixtures/replicas.py). Each round lines the
approvers' calls up on a barrier and sends them to different replicas at once, so their write
transactions meet in the shared store: every approval given is recorded once (none lost, none
doubled), the request activates exactly once, the approval past the quorum is refused as too
late, and nobody approves their own request, whichever replica they ask.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.fixtures.replicas import NAMES, QUORUM_RW, Replicas

ROUNDS = 10
BARRIER_TIMEOUT = 30.0


def at_once(calls: list[Callable[[], tuple[int, Any]]]) -> list[tuple[int, Any]]:
    """Run the calls in threads released together; their answers, in order."""
    barrier = threading.Barrier(len(calls), timeout=BARRIER_TIMEOUT)

    def run(call: Callable[[], tuple[int, Any]]) -> tuple[int, Any]:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def approvers_of(replicas: Replicas, request_id: str) -> list[str]:
    return sorted(a["approver"] for a in replicas.get(request_id, via="c")["approvals"])


def actions_of(replicas: Replicas, request_id: str) -> list[str]:
    return [h["action"] for h in replicas.get(request_id, via="b")["history"]]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_three_approvers_on_three_replicas_at_once_make_exactly_the_quorum(
    replicas: Replicas, round_: int
) -> None:
    request_id = replicas.request(NAMES[round_ % 3], level="read-write")
    approvers = ("carol", "dave", "erin")
    vias = NAMES[round_ % 3 :] + NAMES[: round_ % 3]  # who asks which replica rotates
    answers = at_once([
        lambda who=who, via=via: replicas.approve(request_id, who, via)
        for who, via in zip(approvers, vias, strict=True)
    ])  # fmt: skip
    accepted = sorted(who for who, (s, _) in zip(approvers, answers, strict=True) if s == 200)
    refused = [body["error"] for status, body in answers if status != 200]
    assert len(accepted) == QUORUM_RW, answers
    assert [(r["code"], "active" in r["message"]) for r in refused] == [("invalid_state", True)]
    assert approvers_of(replicas, request_id) == accepted  # none lost, none doubled
    assert replicas.get(request_id, via="a")["state"] == "active"
    assert actions_of(replicas, request_id) == ["create", "approve", "approve", "activate"]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_two_approvals_on_two_replicas_at_once_both_count(replicas: Replicas, round_: int) -> None:
    request_id = replicas.request("c", level="read-write")
    a, b = NAMES[round_ % 3], NAMES[(round_ + 1) % 3]
    answers = at_once([
        lambda: replicas.approve(request_id, "carol", a),
        lambda: replicas.approve(request_id, "dave", b),
    ])  # fmt: skip
    assert [status for status, _ in answers] == [200, 200], answers
    # Each saw the other's approval or not, never both missed it: one answer says active.
    assert sorted(body["state"] for _, body in answers) == ["active", "pending"], answers
    assert approvers_of(replicas, request_id) == ["carol", "dave"]
    assert actions_of(replicas, request_id) == ["create", "approve", "approve", "activate"]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_the_same_approver_on_two_replicas_at_once_counts_once(
    replicas: Replicas, round_: int
) -> None:
    request_id = replicas.request("a", level="read-write")
    a, b = NAMES[round_ % 3], NAMES[(round_ + 2) % 3]
    answers = at_once([
        lambda: replicas.approve(request_id, "erin", a),
        lambda: replicas.approve(request_id, "erin", b),
    ])  # fmt: skip
    assert [(status, body["state"]) for status, body in answers] == [(200, "pending")] * 2
    assert approvers_of(replicas, request_id) == ["erin"]
    assert actions_of(replicas, request_id) == ["create", "approve"]


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_self_approval_is_refused_on_every_replica_at_once(replicas: Replicas, round_: int) -> None:
    request_id = replicas.request(NAMES[round_ % 3], user="carol", level="read-write")
    answers = at_once([
        lambda via=via: replicas.approve(request_id, "carol", via) for via in NAMES
    ])  # fmt: skip
    assert [(status, body["error"]["code"]) for status, body in answers] == [
        (403, "self_approval")
    ] * 3
    assert approvers_of(replicas, request_id) == []
    answers = at_once([
        lambda: replicas.approve(request_id, "dave", NAMES[(round_ + 1) % 3]),
        lambda: replicas.approve(request_id, "erin", NAMES[(round_ + 2) % 3]),
    ])  # fmt: skip
    assert [status for status, _ in answers] == [200, 200], answers
    assert approvers_of(replicas, request_id) == ["dave", "erin"]
    assert replicas.get(request_id, via="a")["state"] == "active"
