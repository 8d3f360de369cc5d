"""A replica's grant cache: when a login is answered from memory, from the store, or refused."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest

from proxy.grants.grant_cache import CONFIRM_WITHIN, GrantCache
from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import AccessRequest, ActiveGrant, RequestState
from proxy.grants.store import Store, StoreTx
from proxy.grants.store_watch import Problem, StateStoreUnavailable
from proxy.policy.models import TargetName, UserName
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import ALICE, PROD, PolicyBox, request_in_state

STALENESS = 30.0


@pytest.fixture
def cache(clock: FakeClock) -> GrantCache:
    return GrantCache(clock, STALENESS)


def issued(service: GrantService, clock: FakeClock) -> AccessRequest:
    """alice's active read-only grant on prod, with its credential."""
    active = request_in_state(service, clock, RequestState.ACTIVE)
    service.issue_credential(active.id, ALICE)
    return active


def grants_of(store: Store) -> tuple[int, tuple[ActiveGrant, ...]]:
    with store.read() as tx:
        return store.changes(), tx.all_active_grants()


def test_nothing_is_answered_from_memory_before_the_first_read(cache: GrantCache) -> None:
    cache.listening(True)
    assert cache.current(ALICE, PROD) is None
    assert cache.last_known(ALICE, PROD) is None


def test_a_loaded_snapshot_answers_while_the_feed_listens_and_no_newer_change_was_heard(
    cache: GrantCache, service: GrantService, store: Store, clock: FakeClock
) -> None:
    active = issued(service, clock)
    cache.load(*grants_of(store))
    assert cache.current(ALICE, PROD) is None  # the feed is not listening yet
    cache.listening(True)
    found = cache.current(ALICE, PROD)
    assert found is not None
    assert [g.request_id for g in found] == [active.id]
    assert cache.current(UserName("bob"), PROD) == ()  # known to have none: no store read
    cache.saw(store.changes() + 1)  # another replica committed something newer
    assert cache.current(ALICE, PROD) is None


def test_a_snapshot_not_confirmed_lately_is_not_current(
    cache: GrantCache, clock: FakeClock
) -> None:
    cache.listening(True)
    cache.load(7, ())
    clock.advance(CONFIRM_WITHIN + 0.5)
    assert cache.current(ALICE, PROD) is None
    assert cache.confirm(7) is True  # the feed's reconciliation read the same counter
    assert cache.current(ALICE, PROD) == ()
    assert cache.confirm(8) is False  # moved: it must read the grants again
    assert cache.current(ALICE, PROD) is None


def test_the_last_known_state_serves_for_max_staleness_then_nothing(
    cache: GrantCache, clock: FakeClock
) -> None:
    cache.load(3, ())
    clock.advance(STALENESS)
    assert cache.last_known(ALICE, PROD) == ()
    clock.advance(0.001)
    assert cache.last_known(ALICE, PROD) is None


class _Unreachable:
    """A store that cannot be reached (the state database is down)."""

    def __init__(self, real: Store) -> None:
        self.real, self.reads = real, 0

    @contextmanager
    def read(self) -> Iterator[StoreTx]:
        self.reads += 1
        raise StateStoreUnavailable("db", Problem.UNREACHABLE, writing=False)
        yield  # pragma: no cover

    def changes(self) -> int:
        raise StateStoreUnavailable("db", Problem.UNREACHABLE, writing=False)

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


def test_logins_rest_on_memory_through_an_outage_of_at_most_max_staleness(
    service: GrantService, store: Store, clock: FakeClock, policy: PolicyBox, cache: GrantCache
) -> None:
    active = issued(service, clock)
    cache.load(*grants_of(store))
    cache.listening(True)
    down = _Unreachable(store)
    replica = GrantService(down, clock, policy, cache=cache)  # type: ignore[arg-type]
    assert replica.active_grant(ALICE, PROD, clock.now()) is not None
    assert down.reads == 0  # answered from memory: nothing waited on the store
    cache.listening(False)  # the feed lost the database too
    grant = replica.active_grant(ALICE, PROD, clock.now())
    assert grant is not None
    assert grant.request_id == active.id
    assert down.reads == 1  # tried, then fell back on the last known state
    clock.advance(timedelta(seconds=STALENESS + 1))
    with pytest.raises(StateStoreUnavailable):
        replica.active_grant(ALICE, PROD, clock.now())  # too old: fail closed


def test_a_replica_knows_the_change_counter_without_asking_while_current(
    service: GrantService, store: Store, clock: FakeClock, policy: PolicyBox, cache: GrantCache
) -> None:
    issued(service, clock)
    cache.load(*grants_of(store))
    replica = GrantService(_Unreachable(store), clock, policy, cache=cache)  # type: ignore[arg-type]
    with pytest.raises(StateStoreUnavailable):
        replica.changes()  # not listening: it must ask
    cache.listening(True)
    assert replica.changes() == store.changes()


def test_grants_are_kept_by_user_and_target_exactly(
    cache: GrantCache, service: GrantService, store: Store, clock: FakeClock
) -> None:
    issued(service, clock)
    cache.load(*grants_of(store))
    cache.listening(True)
    assert cache.current(UserName("Alice"), PROD) == ()
    assert cache.current(ALICE, TargetName("prod ")) == ()
