"""A policy change that removes a grant's user, target or level revokes the grant for good.

Issue 15, item 8: the grant's state becomes `revoked`, by "<policy>", with the reason; putting the
policy back does not revive the old credential. The sweep finds such grants after any change of
policy (a reload, or an edit while pgwarden was stopped); a read of the request finds them too.
Also: every credential of one user shares one salt (item 7).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from proxy.grants.decide import Allow, Deny
from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import POLICY_ACTOR, AccessRequest, Action, RequestState
from proxy.policy.models import Policy
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import (
    ALICE,
    BOB,
    DAVE,
    GROUPS,
    PROD,
    RW,
    STAGING,
    PolicyBox,
    level,
    make_policy,
    new_request,
    request_in_state,
)


def without_read_only() -> Policy:
    return make_policy(prod_levels=(level(RW),))


REMOVALS = {
    "level": without_read_only,
    "target": lambda: replace(make_policy(), targets={STAGING: make_policy().targets[STAGING]}),
    "user": lambda: make_policy(users={k: v for k, v in GROUPS.items() if k != "alice"}),
}
REASONS = {
    "level": "access level 'read-only' of 'prod' was removed from the policy",
    "target": "target 'prod' was removed from the policy",
    "user": "user 'alice' was removed from the policy",
}


@pytest.mark.parametrize("removed", REMOVALS)
def test_the_sweep_revokes_a_grant_the_new_policy_no_longer_allows(
    service: GrantService, clock: FakeClock, policy: PolicyBox, removed: str
) -> None:
    request = request_in_state(service, clock, RequestState.ACTIVE)
    service.issue_credential(request.id, ALICE)
    assert service.sweep() == []
    policy.current = REMOVALS[removed]()
    (revoked,) = service.sweep()
    assert revoked.id == request.id
    assert revoked.state is RequestState.REVOKED
    assert (revoked.closed_by, revoked.close_reason) == (POLICY_ACTOR, REASONS[removed])
    assert revoked.closed_at == clock.now()
    last = service.history(request.id)[-1]
    assert (last.action, last.actor, last.why) == (Action.REVOKE, POLICY_ACTOR, REASONS[removed])


def test_restoring_the_policy_does_not_revive_the_grant(
    service: GrantService, clock: FakeClock, policy: PolicyBox
) -> None:
    request = request_in_state(service, clock, RequestState.ACTIVE)
    service.issue_credential(request.id, ALICE)
    policy.current = without_read_only()
    service.sweep()
    policy.current = make_policy()
    assert service.sweep() == []
    assert service.get(request.id).state is RequestState.REVOKED
    assert isinstance(service.login_decision(ALICE, PROD, clock.now()), Deny)


def test_a_read_revokes_it_even_before_the_sweep(
    service: GrantService, clock: FakeClock, policy: PolicyBox
) -> None:
    request = request_in_state(service, clock, RequestState.ACTIVE)
    policy.current = without_read_only()
    got = service.get(request.id)
    assert (got.state, got.closed_by) == (RequestState.REVOKED, POLICY_ACTOR)


def test_other_grants_and_pending_requests_are_left_alone(
    service: GrantService, clock: FakeClock, policy: PolicyBox
) -> None:
    removed = request_in_state(service, clock, RequestState.ACTIVE)
    kept = new_request(service, access_level=RW)
    kept = service.approve(kept.id, BOB)
    pending = new_request(service)  # its level goes too, but only a grant is revoked
    policy.current = without_read_only()
    assert [r.id for r in service.sweep()] == [removed.id]
    assert service.get(kept.id).state is RequestState.ACTIVE
    assert service.get(pending.id).state is RequestState.PENDING


def test_an_expired_grant_stays_expired_not_revoked(
    service: GrantService, clock: FakeClock, policy: PolicyBox
) -> None:
    request = request_in_state(service, clock, RequestState.ACTIVE)
    assert request.ends_at is not None
    clock.advance(request.ends_at - clock.now())
    policy.current = without_read_only()
    (ended,) = service.sweep()
    assert ended.state is RequestState.EXPIRED


# --- one salt per user (item 7) ------------------------------------------------------------------


def active(service: GrantService, clock: FakeClock, **kwargs: object) -> AccessRequest:
    request = service.approve(new_request(service, **kwargs).id, BOB)  # type: ignore[arg-type]
    if request.state is RequestState.PENDING:  # read-only on prod needs a second approver
        request = service.approve(request.id, DAVE)
    return request


def test_a_users_credentials_share_one_salt_and_both_are_usable(
    service: GrantService, clock: FakeClock
) -> None:
    read_only, read_write = active(service, clock), active(service, clock, access_level=RW)
    service.issue_credential(read_only.id, ALICE)
    clock.advance(timedelta(seconds=1))
    service.issue_credential(read_write.id, ALICE)
    decision = service.login_decision(ALICE, PROD, clock.now())
    assert isinstance(decision, Allow)
    assert {g.request_id for g in decision.grants} == {read_only.id, read_write.id}
    assert decision.grant.request_id == read_write.id  # the newest credential first
    assert len({g.verifier.salt for g in decision.grants}) == 1


def test_another_users_credential_gets_its_own_salt(
    service: GrantService, clock: FakeClock
) -> None:
    mine = active(service, clock)
    service.issue_credential(mine.id, ALICE)
    theirs = new_request(service, requester=DAVE, target=STAGING, reason="")
    service.issue_credential(service.approve(theirs.id, BOB).id, DAVE)
    alice = service.login_decision(ALICE, PROD, clock.now())
    dave = service.login_decision(DAVE, STAGING, clock.now())
    assert isinstance(alice, Allow)
    assert isinstance(dave, Allow)
    assert alice.grant.verifier.salt != dave.grant.verifier.salt
