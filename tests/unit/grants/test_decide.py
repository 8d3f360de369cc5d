"""The login decision: decide() as a table, and GrantService.active_grant over the real store."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from proxy.auth.credentials import make_verifier
from proxy.grants.decide import Allow, Deny, decide
from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import ActiveGrant, RequestId, RequestState
from proxy.policy.models import AccessLevelName, Policy, TargetName, UserName
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import (
    ALICE,
    BOB,
    GROUPS,
    HOUR,
    PROD,
    RO,
    RW,
    STAGING,
    PolicyBox,
    level,
    make_policy,
    new_request,
    request_in_state,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
VERIFIER = make_verifier("not-a-real-password", iterations=1)
POLICY = make_policy()


def grant(
    id_: str = "g1",
    *,
    user: str = "alice",
    target: str = "prod",
    access_level: str = "read-only",
    activated: timedelta = timedelta(0),
    ends: timedelta = HOUR,
    issued: timedelta = timedelta(0),
) -> ActiveGrant:
    return ActiveGrant(
        request_id=RequestId(id_),
        user=UserName(user),
        target=TargetName(target),
        access_level=AccessLevelName(access_level),
        activated_at=T0 + activated,
        ends_at=T0 + ends,
        verifier=VERIFIER,
        credential_issued_at=T0 + issued,
    )


def without_user(user: UserName) -> Policy:
    return make_policy(users={u: g for u, g in GROUPS.items() if u != user})


# (login user, login target, grants, policy, now - T0, expected: chosen grant id or deny reason)
CASES: list[tuple[str, str, str, list[ActiveGrant], Policy, timedelta, str]] = [
    ("inside the window", "alice", "prod", [grant()], POLICY, timedelta(0), "g1"),
    ("a microsecond before the end", "alice", "prod", [grant()], POLICY,
     HOUR - timedelta(microseconds=1), "g1"),
    ("at the end", "alice", "prod", [grant()], POLICY, HOUR, "ended at"),
    ("after the end", "alice", "prod", [grant()], POLICY, 2 * HOUR, "ended at"),
    ("wall clock jumped back before activation", "alice", "prod", [grant()], POLICY,
     -2 * HOUR, "g1"),
    ("no grants", "alice", "prod", [], POLICY, timedelta(0), "no active grant"),
    ("user removed from the policy", "alice", "prod", [grant()], without_user(ALICE),
     timedelta(0), "user 'alice' is not in the policy"),
    ("target removed from the policy", "alice", "prod", [grant()],
     replace(POLICY, targets={STAGING: POLICY.targets[STAGING]}), timedelta(0),
     "target 'prod' is not in the policy"),
    ("level removed from the policy", "alice", "prod", [grant()],
     make_policy(prod_levels=(level(RW),)), timedelta(0), "no longer in the policy"),
    ("login name in another case", "Alice", "prod", [grant()], POLICY, timedelta(0),
     "user 'Alice' is not in the policy"),
    ("login name with a trailing space", "alice ", "prod", [grant()], POLICY, timedelta(0),
     "not in the policy"),
    ("target name in another case", "alice", "Prod", [grant()], POLICY, timedelta(0),
     "target 'Prod' is not in the policy"),
    ("someone else's grant", "bob", "prod", [grant()], POLICY, timedelta(0), "belongs to"),
    ("a grant on another target", "alice", "staging", [grant()], POLICY, timedelta(0),
     "belongs to"),
    ("the latest credential wins", "alice", "prod",
     [grant("ro", issued=timedelta(minutes=5)),
      grant("rw", access_level="read-write", activated=timedelta(minutes=1),
            issued=timedelta(minutes=2))],
     POLICY, timedelta(minutes=10), "ro"),
    ("same credential time: the later activation", "alice", "prod",
     [grant("a", activated=timedelta(minutes=1)), grant("b")], POLICY, timedelta(minutes=2),
     "a"),
    ("full tie: the higher id", "alice", "prod", [grant("a"), grant("b")], POLICY,
     timedelta(0), "b"),
    ("the newest grant is unusable: the next one", "alice", "prod",
     [grant("ro"), grant("rw", access_level="read-write", issued=timedelta(minutes=1),
                         ends=timedelta(minutes=2))],
     POLICY, timedelta(minutes=3), "ro"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("user", "target", "grants", "policy", "at", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(
    *,
    user: str,
    target: str,
    grants: list[ActiveGrant],
    policy: Policy,
    at: timedelta,
    expected: str,
) -> None:
    decision = decide(UserName(user), TargetName(target), grants, policy, T0 + at)
    if isinstance(decision, Allow):
        assert decision.grant.request_id == expected
        assert decision.ends_at == decision.grant.ends_at
    else:
        assert isinstance(decision, Deny)
        assert expected in decision.reason


def test_decide_is_pure_and_accepts_any_iterable() -> None:
    grants = (g for g in [grant()])
    assert decide(ALICE, PROD, grants, POLICY, T0) == Allow(grant(), T0 + HOUR)


# --- active_grant: the store plus the current policy, with a fake clock ---------------------


@pytest.fixture
def granted(service: GrantService, clock: FakeClock) -> RequestId:
    """An active 1 h prod read-only grant of alice's, with a credential."""
    request = request_in_state(service, clock, RequestState.ACTIVE)
    service.issue_credential(request.id, ALICE)
    return request.id


def test_a_login_gets_the_active_grant_with_its_verifier(
    service: GrantService, clock: FakeClock, granted: RequestId
) -> None:
    found = service.active_grant(ALICE, PROD, clock.now())
    assert found is not None
    assert (found.request_id, found.access_level) == (granted, RO)
    assert found.ends_at == service.get(granted).ends_at


def test_an_active_grant_without_a_credential_cannot_log_in(
    service: GrantService, clock: FakeClock
) -> None:
    request_in_state(service, clock, RequestState.ACTIVE)
    assert service.active_grant(ALICE, PROD, clock.now()) is None


def test_an_expired_grant_no_longer_logs_in(
    service: GrantService, clock: FakeClock, granted: RequestId
) -> None:
    clock.advance(HOUR)  # not swept: the decision checks the window itself
    assert service.active_grant(ALICE, PROD, clock.now()) is None
    decision = service.login_decision(ALICE, PROD, clock.now())
    assert isinstance(decision, Deny)
    assert "ended at" in decision.reason


def test_a_revoked_grant_no_longer_logs_in(
    service: GrantService, clock: FakeClock, granted: RequestId
) -> None:
    service.revoke(granted, BOB, "incident over")
    assert service.active_grant(ALICE, PROD, clock.now()) is None


@pytest.mark.parametrize("removed", ["user", "target", "level"])
def test_a_grant_removed_from_the_policy_no_longer_logs_in(
    service: GrantService, clock: FakeClock, policy: PolicyBox, granted: RequestId, removed: str
) -> None:
    policy.current = {
        "user": without_user(ALICE),
        "target": replace(POLICY, targets={STAGING: POLICY.targets[STAGING]}),
        "level": make_policy(prod_levels=(level(RW),)),
    }[removed]
    assert service.active_grant(ALICE, PROD, clock.now()) is None
    policy.current = make_policy()  # put back: the grant is still there, still in its window
    assert service.active_grant(ALICE, PROD, clock.now()) is not None


def test_login_names_match_exactly(
    service: GrantService, clock: FakeClock, granted: RequestId
) -> None:
    for user, target in [("Alice", "prod"), ("alice", "Prod"), ("alice ", "prod"), ("", "prod")]:
        assert service.active_grant(UserName(user), TargetName(target), clock.now()) is None


def test_with_two_grants_the_latest_credential_is_the_one_that_logs_in(
    service: GrantService, clock: FakeClock, granted: RequestId
) -> None:
    rw = new_request(service, access_level=RW)
    service.approve(rw.id, BOB)
    clock.advance(60)
    service.issue_credential(rw.id, ALICE)
    chosen = service.active_grant(ALICE, PROD, clock.now())
    assert chosen is not None
    assert (chosen.request_id, chosen.access_level) == (rw.id, RW)
    clock.advance(60)
    service.issue_credential(granted, ALICE)  # alice asks again for her read-only password
    chosen = service.active_grant(ALICE, PROD, clock.now())
    assert chosen is not None
    assert chosen.request_id == granted
