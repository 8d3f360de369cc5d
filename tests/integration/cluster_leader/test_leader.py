"""The advisory-lock leader, in process, against the harness PostgreSQL: one of several leads;
when it goes (closed, or its backend ended) another takes over at its next try; a leader whose
checks stop stops leading when its lease runs out, without waiting for the database."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from proxy.clock import SYSTEM_CLOCK
from proxy.cluster.leader import LEASE, AdvisoryLeader, leader_key
from proxy.grants.pg_schema import lock_key
from tests.fixtures.clock import FakeClock
from tests.fixtures.pg_state import PgState

T = TypeVar("T")


def run(scenario: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(scenario, 60))


def leader(pg_state: PgState, changes: list[bool] | None = None, **kw: Any) -> AdvisoryLeader:
    seen = changes if changes is not None else []
    monotonic = kw.pop("monotonic", SYSTEM_CLOCK.monotonic)
    return AdvisoryLeader(pg_state.dsn, pg_state.schema, monotonic, on_change=seen.append, **kw)


async def takes_over(candidate: AdvisoryLeader, tries: int = 40) -> bool:
    """Whether `candidate` leads within `tries` tries (a closed session's backend ends a moment
    after its client closed it, and its lock with it)."""
    for _ in range(tries):
        await candidate.tick()
        if candidate.leading:
            return True
        await asyncio.sleep(0.05)
    return False


def holder(pg_state: PgState, key: int) -> list[int]:
    """The backends that hold advisory lock `key` (as the superuser sees them)."""
    rows = pg_state.query(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        "AND ((classid::bigint << 32) | objid::bigint) = %s",
        key,
    )
    return [int(pid) for (pid,) in rows]


def test_one_of_two_leads_and_the_other_takes_over_when_it_closes(pg_state: PgState) -> None:
    async def scenario() -> None:
        a_changes: list[bool] = []
        a, b = leader(pg_state, a_changes), leader(pg_state)
        for _ in range(3):  # stable: the holder keeps it, the other keeps trying
            await a.tick()
            await b.tick()
            assert (a.leading, b.leading) == (True, False)
        assert len(holder(pg_state, a.key)) == 1
        await a.close()
        assert a_changes == [True, False]
        assert await takes_over(b)
        await b.close()

    run(scenario())


def test_the_leader_key_is_apart_from_the_store_write_lock_and_per_schema() -> None:
    assert leader_key("pgwarden") != lock_key("pgwarden")
    assert leader_key("pgwarden") != leader_key("other")


def test_a_leader_whose_backend_is_ended_stops_leading_and_another_takes_over(
    pg_state: PgState,
) -> None:
    async def scenario() -> None:
        a, b = leader(pg_state), leader(pg_state)
        await a.tick()
        await b.tick()
        (pid,) = holder(pg_state, a.key)
        pg_state.query("SELECT pg_terminate_backend(%s)", pid)
        await a.tick()  # its check fails: it stops at once and lets go
        assert not a.leading
        assert await takes_over(b)
        await a.tick()  # reconnects and tries: the lock is b's now
        assert (a.leading, b.leading) == (False, True)
        await a.close()
        await b.close()

    run(scenario())


def test_a_leader_whose_checks_stop_stops_leading_when_its_lease_ends(pg_state: PgState) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        a = leader(pg_state, monotonic=clock.monotonic)
        await a.tick()
        assert a.leading
        clock.advance(LEASE - 0.5)
        assert a.leading  # within the lease from the last good check
        clock.advance(0.5)
        assert not a.leading  # no check since: not leading, though the lock is still held
        assert holder(pg_state, a.key)
        await a.tick()  # a check that works renews it
        assert a.leading
        await a.close()
        for _ in range(40):  # closing lets the lock go (its backend ends a moment later)
            if not holder(pg_state, a.key):
                break
            await asyncio.sleep(0.05)
        assert holder(pg_state, a.key) == []

    run(scenario())
