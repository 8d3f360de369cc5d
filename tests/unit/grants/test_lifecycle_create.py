"""Creating a request: validation against the policy, clamping, auto-approval."""

from __future__ import annotations

from datetime import timedelta

import pytest

from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import SYSTEM_ACTOR, RequestState
from proxy.grants.rules import InvalidRequest, NotPermitted
from proxy.grants.store import SqliteStore
from proxy.policy.models import AutoApproval, UserName
from tests.fixtures.grants import (
    ALICE,
    BOB,
    HOUR,
    MALLORY,
    PROD,
    RO,
    RW,
    STAGING,
    PolicyBox,
    groups,
    make_policy,
    new_request,
)


def test_request_ids_are_random_and_not_sequential(service: GrantService) -> None:
    ids = [new_request(service).id for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    assert ids != sorted(ids)


@pytest.mark.parametrize(
    ("requester", "target", "level", "duration", "reason", "error", "message"),
    [
        ("nobody", "prod", "read-only", HOUR, "x", NotPermitted, "not in the policy"),
        ("Alice", "prod", "read-only", HOUR, "x", NotPermitted, "not in the policy"),
        ("alice", "Prod", "read-only", HOUR, "x", InvalidRequest, "unknown target"),
        ("alice", "prod ", "read-only", HOUR, "x", InvalidRequest, "unknown target"),
        ("alice", "prod", "read_only", HOUR, "x", InvalidRequest, "no access level"),
        ("alice", "prod", "read-only", timedelta(0), "x", InvalidRequest, "positive"),
        ("alice", "prod", "read-only", -HOUR, "x", InvalidRequest, "positive"),
        ("alice", "prod", "read-only", HOUR, "", InvalidRequest, "reason is required"),
        ("alice", "prod", "read-only", HOUR, " \t", InvalidRequest, "reason is required"),
        ("alice", "prod", "read-only", HOUR, "x" * 2001, InvalidRequest, "longer than"),
    ],
)
def test_a_request_that_does_not_fit_the_policy_is_refused(
    service: GrantService,
    store: SqliteStore,
    *,
    requester: str,
    target: str,
    level: str,
    duration: timedelta,
    reason: str,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        service.create_request(UserName(requester), target, level, duration, reason)  # type: ignore[arg-type]
    assert store.changes() == 0


def test_reason_is_optional_where_the_rule_says_so(service: GrantService) -> None:
    request = new_request(service, target=STAGING, reason="")
    assert request.state is RequestState.PENDING


@pytest.mark.parametrize(
    ("target", "level", "asked", "granted"),
    [
        (PROD, RO, 3 * HOUR, 3 * HOUR),  # under the level's 4 h
        (PROD, RO, 10 * HOUR, 4 * HOUR),  # the level's cap
        (PROD, RW, 2 * HOUR, HOUR),  # read-write's own 1 h cap
        (STAGING, RO, 5 * HOUR, 2 * HOUR),  # no level cap: the target's 2 h
    ],
)
def test_duration_is_clamped_to_the_level_and_target_maximum(
    service: GrantService, target: str, level: str, asked: timedelta, granted: timedelta
) -> None:
    request = new_request(service, target=target, access_level=level, duration=asked)  # type: ignore[arg-type]
    assert (request.requested_duration, request.duration) == (asked, granted)
    assert request.clamped is (asked != granted)
    assert service.get(request.id) == request


# --- auto-approval --------------------------------------------------------------------------

DEV_RO_2H = AutoApproval(frozenset({RO}), 2 * HOUR, groups=groups("dev"))
MALLORY_RO = AutoApproval(frozenset({RO}), timedelta(minutes=30), users=frozenset({MALLORY}))


@pytest.mark.parametrize(
    ("requester", "level", "duration", "auto_approved"),
    [
        (ALICE, RO, HOUR, True),  # by group
        (ALICE, RO, 2 * HOUR, True),  # exactly the rule's maximum
        (ALICE, RO, 9 * HOUR, True),  # clamped to the target's 2 h, which the rule covers
        (MALLORY, RO, timedelta(minutes=30), True),  # by user name
        (MALLORY, RO, timedelta(minutes=31), False),  # longer than the user's rule allows
        (ALICE, RW, HOUR, False),  # another level
        (BOB, RO, HOUR, False),  # neither a listed user nor in a listed group
    ],
)
def test_auto_approval_activates_only_a_matching_request(
    service: GrantService,
    policy: PolicyBox,
    *,
    requester: UserName,
    level: str,
    duration: timedelta,
    auto_approved: bool,
) -> None:
    policy.current = make_policy(auto=(DEV_RO_2H, MALLORY_RO))
    request = service.create_request(requester, STAGING, level, duration, "")  # type: ignore[arg-type]
    assert (request.state is RequestState.ACTIVE) is auto_approved
    if auto_approved:
        assert request.activated_at == request.created_at
        assert service.history(request.id)[-1].actor == SYSTEM_ACTOR
        assert service.approvals(request.id) == ()


def test_a_shorter_auto_rule_does_not_cover_a_longer_clamped_request(
    service: GrantService, policy: PolicyBox
) -> None:
    short = AutoApproval(frozenset({RO}), timedelta(minutes=90), groups=groups("dev"))
    policy.current = make_policy(auto=(short,))
    assert new_request(service, target=STAGING, duration=2 * HOUR).state is RequestState.PENDING
