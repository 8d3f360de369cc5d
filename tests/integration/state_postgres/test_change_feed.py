"""The change feed on a real PostgreSQL: a replica hears what another one commits, recovers
what it missed while its connection was gone, and sets its clock to the database's."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from proxy.clock import SYSTEM_CLOCK, OffsetClock
from proxy.cluster.feed import ChangeFeed, parse_announcement
from proxy.grants.grant_cache import GrantCache
from proxy.grants.lifecycle import GrantService
from proxy.grants.pg_connection import connection_info
from proxy.grants.requests import AccessRequest, RequestState
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import ALICE, PROD, PolicyBox, request_in_state
from tests.fixtures.pg_state import PgState

WAIT = 10.0  # seconds: a bound on every wait (the feed reconnects within a second)


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        time.sleep(0.01)


class Replica:
    """Another replica's memory of the same store: its cache, fed by its own feed."""

    def __init__(self, pg_state: PgState, base: OffsetClock) -> None:
        self.clock = OffsetClock(base)
        self.cache = GrantCache(self.clock, max_staleness=30.0)
        self.delays: list[float] = []
        self.feed = ChangeFeed(
            connection_info(pg_state.dsn), pg_state.schema, self.cache, self.clock,
            on_delay=self.delays.append,
        )  # fmt: skip

    def holds(self, request: AccessRequest) -> bool:
        found = self.cache.current(ALICE, PROD) or ()
        return any(grant.request_id == request.id for grant in found)


@pytest.fixture
def replica(pg_state: PgState) -> Iterator[Replica]:
    replica = Replica(pg_state, OffsetClock(SYSTEM_CLOCK))
    replica.feed.start()
    try:
        eventually(replica.feed.connected.is_set, "the feed listens")
        yield replica
    finally:
        replica.feed.stop()


def issued(service: GrantService, clock: FakeClock) -> AccessRequest:
    active = request_in_state(service, clock, RequestState.ACTIVE)
    service.issue_credential(active.id, ALICE)
    return active


def test_a_credential_and_its_revocation_on_one_replica_reach_the_other_s_memory(
    replica: Replica, service: GrantService, clock: FakeClock
) -> None:
    assert replica.cache.current(ALICE, PROD) == ()
    active = issued(service, clock)
    eventually(lambda: replica.holds(active), "the credential is known to the other replica")
    service.revoke(active.id, ALICE, "done")
    # Current, and without the grant: a login is refused from memory, without the store.
    eventually(lambda: replica.cache.current(ALICE, PROD) == (), "the revocation is known too")
    assert replica.delays
    assert all(0.0 <= d < WAIT for d in replica.delays)


def test_what_was_committed_while_the_feed_was_cut_off_is_read_when_it_is_back(
    replica: Replica, service: GrantService, clock: FakeClock
) -> None:
    active = issued(service, clock)
    eventually(lambda: replica.holds(active), "the credential is known")
    replica.feed.drop_connection()  # the NOTIFY of the revocation below is lost with it
    eventually(lambda: not replica.feed.connected.is_set(), "the feed noticed")
    service.revoke(active.id, ALICE, "lost announcement")
    assert replica.cache.current(ALICE, PROD) is None  # not listening: logins read the store
    eventually(replica.feed.connected.is_set, "the feed listens again")
    eventually(lambda: replica.cache.current(ALICE, PROD) == (), "the revocation was read")


def test_a_replica_whose_host_clock_is_late_takes_the_database_s_time(pg_state: PgState) -> None:
    late_host = OffsetClock(SYSTEM_CLOCK, timedelta(seconds=-5))
    replica = Replica(pg_state, late_host)
    replica.feed.start()
    try:
        eventually(replica.feed.connected.is_set, "the feed listens")
        assert abs(replica.clock.offset - timedelta(seconds=5)) < timedelta(seconds=1)
        assert abs(replica.clock.now() - SYSTEM_CLOCK.now()) < timedelta(seconds=1)
    finally:
        replica.feed.stop()


def test_foreign_notifications_on_the_channel_are_ignored(
    replica: Replica, pg_state: PgState, policy: PolicyBox
) -> None:
    before = replica.cache.known
    pg_state.query("SELECT pg_notify(%s, %s)", replica.feed.channel, "not a counter")
    pg_state.query("SELECT pg_notify(%s, %s)", replica.feed.channel, "9" * 30)
    time.sleep(0.2)  # nothing is expected to happen; give it the chance to go wrong
    assert replica.cache.known == before
    assert replica.feed.connected.is_set()


@pytest.mark.parametrize(
    ("payload", "counter"),
    [("12 1765000000000000", 12), ("12", 12), ("x 1", None), ("", None), ("-1 5", None)],
)
def test_announcements_are_parsed_strictly(payload: str, counter: int | None) -> None:
    assert parse_announcement(payload)[0] == counter


def test_a_clock_hours_off_is_reported_not_followed(
    pg_state: PgState, caplog: pytest.LogCaptureFixture
) -> None:
    broken_host = OffsetClock(SYSTEM_CLOCK, timedelta(hours=-3))
    replica = Replica(pg_state, broken_host)
    replica.feed.start()
    try:
        eventually(replica.feed.connected.is_set, "the feed listens")
        assert replica.clock.offset == timedelta(0)
        assert "fix the time service" in caplog.text
    finally:
        replica.feed.stop()
