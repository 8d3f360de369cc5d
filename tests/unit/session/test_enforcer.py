"""The enforcer with a fake clock: deadlines, jumps, stalls, warnings, revocation, reconciliation.

The grants are real (a GrantService on a temporary SQLite file); the sessions are stand-ins that
record what the enforcer did to them (the real Session is driven end to end in
tests/integration/test_enforcement.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import AccessRequest
from proxy.grants.store import SqliteStore
from proxy.grants.store_watch import Problem, StateStoreUnavailable
from proxy.policy.models import UserName
from proxy.session.enforcer import RECONCILE_INTERVAL, EnforcementSettings, Enforcer, judge
from proxy.session.registry import SessionRegistry
from proxy.session.session import Ending, EndReason, SessionInfo, expiry_message
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import ALICE, BOB, DAVE, PROD, RO, PolicyBox, make_policy

HOUR = timedelta(hours=1)
SETTINGS = EnforcementSettings(warn_before=(300.0, 60.0), long_session_after=2 * 3600.0)


@dataclass(eq=False)
class StandInSession:
    """What the enforcer sees of a session; records endings and notices."""

    info: SessionInfo
    deadline: float
    started: float
    cancel_process_id: int
    cancel_secret: bytes = b"1234"
    ending: Ending | None = None
    notices: list[str] = field(default_factory=list)
    warnings_sent: set[float] = field(default_factory=set)
    reported_long: bool = False
    at_boundary: bool = True

    @property
    def session_id(self) -> str:
        return self.info.session_id

    def terminate(self, ending: Ending) -> None:
        if self.ending is None:
            self.ending = ending

    def notify(self, message: str) -> bool:
        if self.at_boundary:
            self.notices.append(message)
        return self.at_boundary

    def expiry_ending(self) -> Ending:
        return Ending(EndReason.EXPIRED, expiry_message(self.info))


@dataclass
class World:
    clock: FakeClock
    policy: PolicyBox
    grants: GrantService
    registry: SessionRegistry[StandInSession]
    enforcer: Enforcer
    long_reported: list[str]

    def active_grant(self, duration: timedelta = HOUR) -> AccessRequest:
        request = self.grants.create_request(ALICE, PROD, RO, duration, "incident 7")
        self.grants.approve(request.id, BOB)
        return self.grants.approve(request.id, DAVE)

    def session_for(self, grant: AccessRequest) -> StandInSession:
        assert grant.ends_at is not None
        now, mono = self.clock.now(), self.clock.monotonic()
        info = SessionInfo(
            session_id=f"s{len(self.registry)}", user=grant.requester, target=grant.target,
            access_level=grant.access_level, grant_id=grant.id, upstream_role="ro",
            client_address="127.0.0.1", client_tls=False, application_name="", started_at=now,
            grant_ends_at=grant.ends_at, backend_process_id=1,
        )  # fmt: skip
        session = StandInSession(
            info, mono + (grant.ends_at - now).total_seconds(), mono, len(self.registry) + 1
        )
        self.registry.add(session)
        return session

    def check(self) -> None:
        asyncio.run(self.enforcer.check())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock, policy = FakeClock(), PolicyBox(make_policy())
    with SqliteStore(tmp_path / "state.db") as store:
        grants = GrantService(store, clock, policy)
        registry: SessionRegistry[StandInSession] = SessionRegistry()
        reported: list[str] = []
        enforcer = Enforcer(
            registry, grants, policy, clock,  # type: ignore[arg-type]
            settings=SETTINGS, on_long_session=lambda s: reported.append(s.session_id),
        )  # fmt: skip
        yield World(clock, policy, grants, registry, enforcer, reported)


def test_a_session_runs_until_its_deadline_and_ends_expired_there(world: World) -> None:
    session = world.session_for(world.active_grant())
    world.clock.advance(HOUR - timedelta(seconds=1))
    world.check()
    assert session.ending is None
    world.clock.advance(timedelta(seconds=1))
    world.check()
    assert session.ending is not None
    assert session.ending.reason is EndReason.EXPIRED
    assert session.ending.message == expiry_message(session.info)


def test_a_wall_clock_jump_forward_does_not_cut_a_session_early(world: World) -> None:
    session = world.session_for(world.active_grant())
    world.clock.set(world.clock.now() + 2 * HOUR)  # wall clock only: monotonic unchanged
    world.check()
    assert session.ending is None


def test_a_wall_clock_jump_back_does_not_let_a_session_run_late(world: World) -> None:
    session = world.session_for(world.active_grant())
    world.clock.set(world.clock.now() - 2 * HOUR)
    world.clock.advance(HOUR)  # real time passes: the monotonic deadline is reached
    world.check()
    assert session.ending is not None
    assert session.ending.reason is EndReason.EXPIRED


def test_a_stalled_loop_ends_overdue_sessions_at_its_first_check(world: World) -> None:
    sessions = [world.session_for(world.active_grant()) for _ in range(3)]
    world.clock.advance(HOUR + timedelta(minutes=10))  # the loop slept through the deadline
    world.check()
    assert all(s.ending is not None and s.ending.reason is EndReason.EXPIRED for s in sessions)


def test_warnings_come_at_the_configured_offsets_once_each(world: World) -> None:
    session = world.session_for(world.active_grant())
    world.clock.advance(HOUR - timedelta(minutes=5, seconds=1))
    world.check()
    assert session.notices == []
    world.clock.advance(timedelta(seconds=1))
    world.check()
    world.check()
    assert len(session.notices) == 1
    assert session.notices[0].endswith("(in 5 minutes)")
    assert 'your read-only access to "prod" ends at ' in session.notices[0]
    world.clock.advance(timedelta(minutes=4))
    world.check()
    assert len(session.notices) == 2
    assert session.notices[1].endswith("(in 60 seconds)")


def test_a_warning_waits_for_a_message_boundary(world: World) -> None:
    session = world.session_for(world.active_grant())
    session.at_boundary = False
    world.clock.advance(HOUR - timedelta(minutes=4))
    world.check()
    assert session.notices == []
    session.at_boundary = True
    world.check()
    assert len(session.notices) == 1


def test_a_short_grant_skips_warnings_longer_than_itself(world: World) -> None:
    session = world.session_for(world.active_grant(duration=timedelta(minutes=3)))
    world.clock.advance(timedelta(minutes=2, seconds=30))
    world.check()
    assert len(session.notices) == 1
    assert session.notices[0].endswith("(in 30 seconds)")


def test_a_skipped_check_sends_only_the_nearest_warning(world: World) -> None:
    session = world.session_for(world.active_grant())
    world.clock.advance(HOUR - timedelta(seconds=30))  # both offsets passed since the last check
    world.check()
    world.check()
    assert len(session.notices) == 1
    assert session.notices[0].endswith("(in 30 seconds)")


def test_revocation_ends_the_session_at_the_next_check_and_names_who(world: World) -> None:
    grant = world.active_grant()
    session = world.session_for(grant)
    world.check()
    world.grants.revoke(grant.id, BOB, "incident closed")
    world.check()
    assert session.ending is not None
    assert session.ending.reason is EndReason.REVOKED
    assert session.ending.message == (
        'pgwarden: access to "prod" (read-only) was revoked by bob: incident closed'
    )


def test_reconciliation_catches_a_revocation_whose_change_signal_was_missed(world: World) -> None:
    grant = world.active_grant()
    session = world.session_for(grant)
    world.check()
    world.grants.revoke(grant.id, BOB, "missed")
    world.enforcer._last_changes = world.grants.changes()  # as if the counter poll missed it
    world.check()
    assert session.ending is None
    world.clock.advance(timedelta(seconds=RECONCILE_INTERVAL))
    world.check()
    assert session.ending is not None
    assert session.ending.reason is EndReason.REVOKED


def test_a_level_removed_from_the_policy_ends_its_sessions(world: World) -> None:
    session = world.session_for(world.active_grant())
    world.check()
    world.policy.current = make_policy(prod_levels=())
    world.check()
    assert session.ending is not None
    assert session.ending.reason is EndReason.REMOVED


def test_a_user_removed_from_the_policy_ends_their_sessions(world: World) -> None:
    session = world.session_for(world.active_grant())
    world.check()
    people = {"bob": ("dba",), "dave": ("sre",)}
    world.policy.current = make_policy(users=people)
    world.check()
    assert session.ending is not None
    assert session.ending.reason is EndReason.REMOVED


def test_long_sessions_are_reported_once(world: World) -> None:
    session = world.session_for(world.active_grant(duration=4 * HOUR))
    world.clock.advance(2 * HOUR - timedelta(seconds=1))
    world.check()
    assert world.long_reported == []
    world.clock.advance(timedelta(seconds=1))
    world.check()
    world.check()
    assert world.long_reported == [session.session_id]
    assert session.ending is None


def test_judge_leaves_expiry_to_the_deadline(world: World) -> None:
    grant = world.active_grant()
    session = world.session_for(grant)
    world.clock.set(world.clock.now() + 2 * HOUR)  # the store now sees the window as past
    expired = world.grants.get(grant.id)
    assert judge(session.info, expired, world.policy()) is None


def test_an_active_session_on_an_untouched_grant_is_left_alone(world: World) -> None:
    session = world.session_for(world.active_grant())
    for _ in range(5):
        world.clock.advance(timedelta(seconds=1))
        world.check()
    assert session.ending is None
    assert UserName(session.info.user) == ALICE


def test_a_policy_change_ends_sessions_even_while_the_store_cannot_be_read(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = world.session_for(world.active_grant())
    world.check()

    def unreachable(*args: object) -> object:
        raise StateStoreUnavailable("postgresql://db:5432/pgwarden", Problem.UNREACHABLE,
                                    writing=False)  # fmt: skip

    monkeypatch.setattr(world.grants, "changes", unreachable)
    monkeypatch.setattr(world.grants, "get", unreachable)
    world.check()  # no change of policy: nothing to decide without the store
    assert session.ending is None
    world.policy.current = make_policy(users={"bob": ("dba",), "dave": ("sre",)})
    world.check()
    assert session.ending is not None
    assert session.ending.reason is EndReason.REMOVED


def test_a_wake_from_another_thread_checks_at_once_not_at_the_next_tick(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change feed's thread wakes the enforcer when another replica's change is announced."""
    monkeypatch.setattr("proxy.session.enforcer.TICK", 3600.0)  # no tick would come in time
    grant = world.active_grant()
    session = world.session_for(grant)

    async def scenario() -> None:
        task = asyncio.create_task(world.enforcer.run())
        await asyncio.sleep(0.05)  # the first check ran; the loop now waits up to TICK
        world.grants.revoke(grant.id, BOB, "leaving")
        await asyncio.get_running_loop().run_in_executor(None, world.enforcer.wake)
        await asyncio.wait_for(_ended(session), timeout=5)
        task.cancel()

    asyncio.run(scenario())
    assert session.ending is not None
    assert session.ending.reason is EndReason.REVOKED


def test_a_wake_before_the_loop_runs_is_harmless(world: World) -> None:
    world.enforcer.wake()


async def _ended(session: StandInSession) -> None:
    while session.ending is None:
        await asyncio.sleep(0.005)
