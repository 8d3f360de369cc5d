"""Shared fixtures for the state store and lifecycle tests: a fake clock, a policy, a service.

The policy is built directly as values (no YAML). `PolicyBox` holds the *current* policy and is
what `GrantService` calls, so a test can swap the policy mid-way as a reload would.

Cast: alice (dev) requests; bob (dba), carol (dba and sre: two approver groups), dave (sre)
approve on prod; erin is an admin and no approver; frank is an admin *and* a dba approver;
mallory belongs to nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from proxy.policy.lifecycle import GrantService
from proxy.policy.models import (
    AccessLevel,
    AccessLevelName,
    ApprovalRule,
    AutoApproval,
    GroupName,
    Policy,
    SecretRef,
    Target,
    TargetName,
    Upstream,
    User,
    UserName,
)
from proxy.policy.requests import AccessRequest, RequestState
from proxy.policy.store import SqliteStore
from tests.fixtures.clock import FakeClock

ALICE, BOB, CAROL, DAVE = UserName("alice"), UserName("bob"), UserName("carol"), UserName("dave")
ERIN, FRANK, MALLORY = UserName("erin"), UserName("frank"), UserName("mallory")
PROD, STAGING = TargetName("prod"), TargetName("staging")
RO, RW = AccessLevelName("read-only"), AccessLevelName("read-write")
HOUR = timedelta(hours=1)

GROUPS: dict[str, tuple[str, ...]] = {
    "alice": ("dev",),
    "bob": ("dba",),
    "carol": ("dba", "sre"),
    "dave": ("sre",),
    "erin": ("admins",),
    "frank": ("admins", "dba"),
    "mallory": (),
}


def groups(*names: str) -> frozenset[GroupName]:
    return frozenset(GroupName(n) for n in names)


def level(
    name: AccessLevelName,
    max_duration: timedelta | None = None,
    approval: ApprovalRule | None = None,
) -> AccessLevel:
    return AccessLevel(name, f"pgw_{name}", SecretRef(env="PGW_UNUSED"), max_duration, approval)


def make_policy(
    *,
    required: int = 2,
    users: dict[str, tuple[str, ...]] | None = None,
    prod_levels: tuple[AccessLevel, ...] | None = None,
    auto: tuple[AutoApproval, ...] = (),
    pending_timeout: timedelta = HOUR,
) -> Policy:
    """prod: read-only (≤ 4 h) and read-write (≤ 1 h, one dba), `required` of dba/sre approvers,
    reason required, target max 8 h. staging: dba approves one, no reason needed, target max 2 h,
    and `auto` as its auto-approval rules."""
    upstream = Upstream("db.internal", 5432, "app")
    one_dba = ApprovalRule(approver_groups=groups("dba"), required_approvals=1)
    if prod_levels is None:
        prod_levels = (level(RO, 4 * HOUR), level(RW, HOUR, one_dba))
    prod = Target(
        PROD,
        upstream,
        {lv.name: lv for lv in prod_levels},
        max_duration=8 * HOUR,
        approval=ApprovalRule(approver_groups=groups("dba", "sre"), required_approvals=required),
    )
    staging_rule = ApprovalRule(
        approver_groups=groups("dba"), require_reason=False, auto_approve=auto
    )
    staging = Target(
        STAGING, upstream, {RO: level(RO), RW: level(RW)}, 2 * HOUR, approval=staging_rule
    )
    people = GROUPS if users is None else users
    return Policy(
        users={UserName(u): User(UserName(u), groups(*g)) for u, g in people.items()},
        targets={PROD: prod, STAGING: staging},
        admin_groups=groups("admins"),
        pending_timeout=pending_timeout,
    )


class PolicyBox:
    """The current policy, swappable like a reload."""

    def __init__(self, policy: Policy) -> None:
        self.current = policy

    def __call__(self) -> Policy:
        return self.current


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def policy() -> PolicyBox:
    return PolicyBox(make_policy())


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(db_path) as opened:
        yield opened


@pytest.fixture
def service(store: SqliteStore, clock: FakeClock, policy: PolicyBox) -> GrantService:
    return GrantService(store, clock, policy)


def new_request(
    service: GrantService,
    *,
    requester: UserName = ALICE,
    target: TargetName = PROD,
    access_level: AccessLevelName = RO,
    duration: timedelta = HOUR,
    reason: str = "incident 42",
) -> AccessRequest:
    return service.create_request(requester, target, access_level, duration, reason)


def request_in_state(service: GrantService, clock: FakeClock, state: RequestState) -> AccessRequest:
    """A prod read-only request of alice's (1 h, 2 approvers needed), brought to `state`."""
    request = new_request(service)
    steps = {
        RequestState.DENIED: lambda: service.deny(request.id, BOB, "not now"),
        RequestState.CANCELLED: lambda: service.cancel(request.id, ALICE),
        RequestState.LAPSED: lambda: _after(clock, HOUR, lambda: service.get(request.id)),
    }
    if state is RequestState.PENDING:
        return request
    if state in steps:
        return steps[state]()
    service.approve(request.id, BOB)
    active = service.approve(request.id, DAVE)
    if state is RequestState.EXPIRED:
        return _after(clock, HOUR, lambda: service.get(request.id))
    if state is RequestState.REVOKED:
        return service.revoke(request.id, BOB, "done")
    return active


def _after(clock: FakeClock, delay: timedelta, then: Callable[[], AccessRequest]) -> AccessRequest:
    clock.advance(delay)
    return then()
