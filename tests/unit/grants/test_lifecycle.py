"""The request lifecycle: the transition table, and GrantService applying it under the policy."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta

import pytest

from proxy.errors import PgwardenError
from proxy.grants.lifecycle import (
    TRANSITIONS,
    GrantService,
    LifecycleError,
    RequestNotFound,
    next_state,
)
from proxy.grants.requests import SYSTEM_ACTOR, Action, RequestId, RequestState
from proxy.grants.rules import InvalidRequest, NotPermitted
from proxy.grants.store import SqliteStore
from proxy.policy.models import UserName
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    ERIN,
    FRANK,
    HOUR,
    MALLORY,
    PROD,
    RW,
    PolicyBox,
    make_policy,
    new_request,
    request_in_state,
)

STATES: tuple[RequestState | None, ...] = (None, *RequestState)
PAIRS = list(itertools.product(STATES, Action))
LEGAL = [pair for pair in PAIRS if pair in TRANSITIONS]
ILLEGAL = [pair for pair in PAIRS if pair not in TRANSITIONS and pair[0] is not None]

Operation = Callable[[GrantService, RequestId], object]
OPERATIONS: dict[Action, Operation] = {
    Action.APPROVE: lambda s, rid: s.approve(rid, CAROL),
    Action.DENY: lambda s, rid: s.deny(rid, CAROL, "no"),
    Action.CANCEL: lambda s, rid: s.cancel(rid, ALICE),
    Action.REVOKE: lambda s, rid: s.revoke(rid, CAROL, "stop"),
    Action.ISSUE_CREDENTIAL: lambda s, rid: s.issue_credential(rid, ALICE),
}


# --- the table itself -----------------------------------------------------------------------


def test_the_table_has_exactly_the_documented_moves() -> None:
    moves = {(s, t) for (s, _a), t in TRANSITIONS.items() if s != t}
    p, a = RequestState.PENDING, RequestState.ACTIVE
    assert moves == {
        (None, p),
        (p, a),
        (p, RequestState.DENIED),
        (p, RequestState.CANCELLED),
        (p, RequestState.LAPSED),
        (a, RequestState.EXPIRED),
        (a, RequestState.REVOKED),
    }
    assert not any(state is not None and state.is_final for state, _ in TRANSITIONS)


@pytest.mark.parametrize(("state", "action"), LEGAL)
def test_a_legal_action_leads_where_the_table_says(
    state: RequestState | None, action: Action
) -> None:
    assert next_state(RequestId("r1"), state, action) is TRANSITIONS[(state, action)]


@pytest.mark.parametrize(("state", "action"), ILLEGAL)
def test_an_illegal_action_names_the_request_its_state_and_the_action(
    state: RequestState, action: Action
) -> None:
    with pytest.raises(LifecycleError) as caught:
        next_state(RequestId("7f3a"), state, action)
    assert caught.value.state is state
    assert caught.value.action is action
    assert f"request 7f3a is {state}; it can " in str(caught.value)
    assert caught.value.sqlstate == "55000"


def test_nothing_happens_to_a_request_before_it_is_created() -> None:
    with pytest.raises(PgwardenError, match="must be created"):
        next_state(RequestId("7f3a"), None, Action.APPROVE)


def test_error_wording_says_no_longer_or_only_once() -> None:
    with pytest.raises(LifecycleError, match=r"is expired; it can no longer be approved$"):
        next_state(RequestId("7f3a"), RequestState.EXPIRED, Action.APPROVE)
    with pytest.raises(LifecycleError, match=r"is pending; it can only be revoked once active$"):
        next_state(RequestId("7f3a"), RequestState.PENDING, Action.REVOKE)


# --- every service operation from every state, against the table ---------------------------


@pytest.mark.parametrize("action", list(OPERATIONS))
@pytest.mark.parametrize("state", list(RequestState))
def test_each_operation_in_each_state_follows_the_table(
    service: GrantService, clock: FakeClock, state: RequestState, action: Action
) -> None:
    request = request_in_state(service, clock, state)
    before = service.history(request.id)
    if (state, action) in TRANSITIONS:
        OPERATIONS[action](service, request.id)
        assert service.get(request.id).state is TRANSITIONS[(state, action)]
        assert service.history(request.id)[-1].action is action
    else:
        with pytest.raises(LifecycleError) as caught:
            OPERATIONS[action](service, request.id)
        assert (caught.value.request_id, caught.value.state) == (request.id, state)
        assert service.get(request.id).state is state
        assert service.history(request.id) == before


def test_every_transition_is_in_the_history_with_who_when_why(
    service: GrantService, clock: FakeClock
) -> None:
    request = new_request(service)
    clock.advance(60)
    service.approve(request.id, BOB, "ok")
    clock.advance(60)
    service.approve(request.id, DAVE)
    clock.advance(60)
    service.revoke(request.id, ERIN, "incident closed")
    rows = [
        (t.action, t.from_state, t.to_state, t.actor, t.why) for t in service.history(request.id)
    ]
    p, a, r = RequestState.PENDING, RequestState.ACTIVE, RequestState.REVOKED
    assert rows == [
        (Action.CREATE, None, p, ALICE, "incident 42"),
        (Action.APPROVE, p, p, BOB, "1 of 2 approvals: ok"),
        (Action.APPROVE, p, p, DAVE, "2 of 2 approvals"),
        (Action.ACTIVATE, p, a, DAVE, "2 of 2 approvals"),
        (Action.REVOKE, a, r, ERIN, "incident closed"),
    ]
    start = request.created_at
    assert [t.at - start for t in service.history(request.id)] == [
        timedelta(seconds=s) for s in (0, 60, 120, 120, 180)
    ]


def test_unknown_request_is_reported(service: GrantService) -> None:
    with pytest.raises(RequestNotFound, match="no request nope"):
        service.approve(RequestId("nope"), BOB)
    with pytest.raises(RequestNotFound):
        service.get(RequestId("nope"))


# --- approvals and the window ---------------------------------------------------------------


def test_the_window_starts_at_activation_and_lasts_the_granted_duration(
    service: GrantService, clock: FakeClock
) -> None:
    request = new_request(service, duration=3 * HOUR)
    clock.advance(timedelta(minutes=10))
    assert service.approve(request.id, BOB).state is RequestState.PENDING
    clock.advance(timedelta(minutes=20))
    active = service.approve(request.id, DAVE)
    assert active.state is RequestState.ACTIVE
    assert active.activated_at == request.created_at + timedelta(minutes=30)
    assert active.ends_at == active.activated_at + 3 * HOUR


def test_self_approval_is_refused_even_for_an_admin_approver(
    service: GrantService, policy: PolicyBox
) -> None:
    request = new_request(service, requester=FRANK)  # frank: admin and dba approver
    with pytest.raises(NotPermitted, match="own request"):
        service.approve(request.id, FRANK)
    assert service.approvals(request.id) == ()
    policy.current = make_policy(required=1)
    service.approve(request.id, BOB)
    assert service.get(request.id).state is RequestState.ACTIVE


def test_one_person_in_two_approver_groups_counts_once(service: GrantService) -> None:
    request = new_request(service)
    assert service.approve(request.id, CAROL).state is RequestState.PENDING
    assert service.approve(request.id, CAROL).state is RequestState.PENDING
    assert [a.approver for a in service.approvals(request.id)] == [CAROL]


def test_a_double_click_is_a_no_op(service: GrantService, store: SqliteStore) -> None:
    request = new_request(service)
    first = service.approve(request.id, BOB, "lgtm")
    changes, history = store.changes(), service.history(request.id)
    assert service.approve(request.id, BOB, "lgtm again") == first
    assert store.changes() == changes
    assert service.history(request.id) == history
    assert [a.comment for a in service.approvals(request.id)] == ["lgtm"]


@pytest.mark.parametrize("who", [MALLORY, ERIN, UserName("ghost"), UserName("Bob")])
def test_only_eligible_approvers_approve(service: GrantService, who: UserName) -> None:
    request = new_request(service)
    with pytest.raises(NotPermitted, match="not an approver"):
        service.approve(request.id, who)


def test_a_level_rule_overrides_the_target_rule(service: GrantService) -> None:
    request = new_request(service, access_level=RW)  # read-write: one dba
    with pytest.raises(NotPermitted):
        service.approve(request.id, DAVE)  # sre approves prod, not prod read-write
    assert service.approve(request.id, BOB).state is RequestState.ACTIVE


@pytest.mark.parametrize(
    "state",
    [
        RequestState.CANCELLED,
        RequestState.LAPSED,
        RequestState.EXPIRED,
        RequestState.REVOKED,
        RequestState.DENIED,
        RequestState.ACTIVE,
    ],
)
def test_approving_after_the_request_left_pending_is_refused(
    service: GrantService, clock: FakeClock, state: RequestState
) -> None:
    request = request_in_state(service, clock, state)
    approvals = service.approvals(request.id)
    with pytest.raises(LifecycleError, match=f"is {state}; it can no longer be approved"):
        service.approve(request.id, CAROL)
    assert service.approvals(request.id) == approvals


def test_eligibility_is_judged_under_the_current_policy(
    service: GrantService, policy: PolicyBox
) -> None:
    request = new_request(service)
    service.approve(request.id, BOB)
    without_bob = {u: g for u, g in make_policy().users.items() if u != BOB}
    policy.current = make_policy(users={u: tuple(g.groups) for u, g in without_bob.items()})
    with pytest.raises(NotPermitted):
        service.approve(request.id, BOB)
    # bob's earlier approval no longer counts either: dave alone is 1 of 2
    assert service.approve(request.id, DAVE).state is RequestState.PENDING
    assert service.approve(request.id, CAROL).state is RequestState.ACTIVE


def test_approving_a_request_whose_level_left_the_policy_is_refused(
    service: GrantService, policy: PolicyBox
) -> None:
    request = new_request(service)
    policy.current = make_policy(prod_levels=())
    with pytest.raises(InvalidRequest, match="no longer in the policy"):
        service.approve(request.id, BOB)


# --- lapse and expiry (fake clock) ----------------------------------------------------------


def test_a_pending_request_lapses_after_the_pending_timeout(
    service: GrantService, clock: FakeClock
) -> None:
    request = new_request(service)
    clock.advance(HOUR - timedelta(microseconds=1))
    assert service.get(request.id).state is RequestState.PENDING
    assert service.sweep() == []
    clock.advance(timedelta(microseconds=1))
    lapsed = service.get(request.id)
    assert lapsed.state is RequestState.LAPSED
    assert (lapsed.closed_by, lapsed.closed_at) == (SYSTEM_ACTOR, request.created_at + HOUR)
    assert service.history(request.id)[-1].action is Action.LAPSE


def test_sweep_lapses_and_expires_everything_due_once(
    service: GrantService, clock: FakeClock
) -> None:
    pending = new_request(service)
    active = request_in_state(service, clock, RequestState.ACTIVE)
    clock.advance(HOUR)
    swept = service.sweep()
    assert {(r.id, r.state) for r in swept} == {
        (pending.id, RequestState.LAPSED),
        (active.id, RequestState.EXPIRED),
    }
    assert service.sweep() == []


def test_reading_a_request_past_its_window_reports_it_expired(
    service: GrantService, clock: FakeClock
) -> None:
    active = request_in_state(service, clock, RequestState.ACTIVE)
    assert active.ends_at is not None
    clock.set(active.ends_at)  # a wall-clock jump counts: windows are wall-clock instants
    expired = service.get(active.id)
    assert (expired.state, expired.closed_at) == (RequestState.EXPIRED, active.ends_at)
    with pytest.raises(LifecycleError, match="is expired; it can no longer be revoked"):
        service.revoke(active.id, BOB, "late")


@pytest.mark.parametrize("action", list(OPERATIONS))
def test_an_action_on_a_request_whose_time_is_up_records_the_lapse_or_expiry(
    service: GrantService, store: SqliteStore, clock: FakeClock, action: Action
) -> None:
    pending = new_request(service)
    active = request_in_state(service, clock, RequestState.ACTIVE)
    clock.advance(HOUR)  # both are due, neither is swept yet
    for request in (pending, active):
        with pytest.raises(LifecycleError, match=r"is (lapsed|expired)"):
            OPERATIONS[action](service, request.id)
    with store.read() as tx:  # what is stored, not what get() would compute
        assert tx.history(pending.id)[-1].action is Action.LAPSE
        assert tx.history(active.id)[-1].action is Action.EXPIRE


def test_expire_due_takes_an_explicit_instant(service: GrantService, clock: FakeClock) -> None:
    active = request_in_state(service, clock, RequestState.ACTIVE)
    assert active.ends_at is not None
    assert service.expire_due(active.ends_at - timedelta(microseconds=1)) == []
    assert [r.state for r in service.expire_due(active.ends_at)] == [RequestState.EXPIRED]


def test_a_pending_timeout_change_applies_to_waiting_requests(
    service: GrantService, clock: FakeClock, policy: PolicyBox
) -> None:
    request = new_request(service)
    clock.advance(timedelta(minutes=20))
    policy.current = make_policy(pending_timeout=timedelta(minutes=15))
    lapsed = service.get(request.id)
    assert (lapsed.state, lapsed.closed_at) == (
        RequestState.LAPSED,
        request.created_at + timedelta(minutes=15),
    )


# --- deny, cancel, revoke: who may -----------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "allowed"), [(BOB, True), (ERIN, True), (ALICE, False), (MALLORY, False)]
)
def test_deny_is_for_eligible_approvers_and_admins(
    service: GrantService, who: UserName, allowed: bool
) -> None:
    request = new_request(service)
    if allowed:
        denied = service.deny(request.id, who, "too broad")
        assert (denied.state, denied.closed_by, denied.close_reason) == (
            RequestState.DENIED,
            who,
            "too broad",
        )
    else:
        with pytest.raises(NotPermitted):
            service.deny(request.id, who, "no")


@pytest.mark.parametrize("who", [BOB, ERIN, MALLORY])
def test_only_the_requester_cancels(service: GrantService, who: UserName) -> None:
    request = new_request(service)
    with pytest.raises(NotPermitted):
        service.cancel(request.id, who)
    assert service.cancel(request.id, ALICE).state is RequestState.CANCELLED


@pytest.mark.parametrize(
    ("who", "allowed"),
    [
        (ALICE, True),
        (BOB, True),
        (DAVE, True),
        (ERIN, True),
        (MALLORY, False),
        (UserName("x"), False),
    ],
)
def test_revoke_is_for_the_requester_an_approver_or_an_admin(
    service: GrantService, clock: FakeClock, who: UserName, allowed: bool
) -> None:
    request = request_in_state(service, clock, RequestState.ACTIVE)
    service.issue_credential(request.id, ALICE)
    clock.advance(60)
    if not allowed:
        with pytest.raises(NotPermitted):
            service.revoke(request.id, who, "why not")
        return
    revoked = service.revoke(request.id, who, "done")
    assert (revoked.state, revoked.closed_by, revoked.closed_at) == (
        RequestState.REVOKED,
        who,
        clock.now(),
    )
    assert service.active_grant(ALICE, PROD, clock.now()) is None


def test_an_approver_of_another_level_cannot_revoke(
    service: GrantService, clock: FakeClock
) -> None:
    request = new_request(service, access_level=RW)
    service.approve(request.id, BOB)
    with pytest.raises(NotPermitted):
        service.revoke(request.id, DAVE, "sre approves read-only only")


def test_oversized_comments_and_reasons_are_refused(service: GrantService) -> None:
    request = new_request(service)
    with pytest.raises(InvalidRequest):
        service.approve(request.id, BOB, "x" * 2001)
    with pytest.raises(InvalidRequest):
        service.deny(request.id, BOB, "x" * 2001)


# --- the change counter ---------------------------------------------------------------------


def test_every_write_bumps_the_change_counter_and_reads_do_not(
    service: GrantService, clock: FakeClock
) -> None:
    assert service.changes() == 0
    request = new_request(service)
    assert service.changes() == 1
    service.get(request.id)
    service.history(request.id)
    service.sweep()
    service.active_grant(ALICE, PROD, clock.now())
    assert service.changes() == 1
    service.approve(request.id, BOB)
    assert service.changes() == 2
    with pytest.raises(NotPermitted):
        service.approve(request.id, ALICE)
    assert service.changes() == 2


def test_the_fake_clock_jumps_wall_time_without_moving_monotonic_time(clock: FakeClock) -> None:
    start, mono = clock.now(), clock.monotonic()
    clock.advance(1.5)
    clock.advance(timedelta(seconds=1))
    assert (clock.now() - start, clock.monotonic() - mono) == (timedelta(seconds=2.5), 2.5)
    clock.set(start - 2 * HOUR)
    assert (clock.now(), clock.monotonic() - mono) == (start - 2 * HOUR, 2.5)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
