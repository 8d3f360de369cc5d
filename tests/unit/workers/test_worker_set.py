"""The primary's end of the worker channels (`WorkerSet`), wired to real `PrimaryLink`s inside
one event loop, no process started: routing cancels, metrics snapshots, readiness, and the
calls the API makes (sessions, find, end).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import (
    generate_latest,
)

from proxy.session.session import Ending, EndReason
from proxy.workers.channel import WorkerChannel, channel_pair
from proxy.workers.link import join_primary
from proxy.workers.primary import WorkerSet
from tests.fixtures.workers import (
    WAIT,
    WELCOME,
    FakeSession,
    Worker,
    make_info,
    run,
    samples_of,
    scrape,
    worker_registry,
)

# --- the primary's end: WorkerSet -----------------------------------------------------------


class Primary:
    """A WorkerSet with no processes; workers are attached over real channels by hand."""

    def __init__(self, count: int = 3) -> None:
        self.cancelled_here: list[tuple[int, bytes]] = []
        self.cancel_checked_here = asyncio.Event()
        self.workers = WorkerSet(
            count, lambda k, fd: [], lambda: dict(WELCOME), self._cancel_here, monotonic=lambda: 0.0
        )
        self._attached: list[tuple[Worker, WorkerChannel, asyncio.Task[None]]] = []
        self.readers: dict[int, asyncio.Task[None]] = {}

    def _cancel_here(self, process_id: int, secret: bytes) -> None:
        self.cancelled_here.append((process_id, secret))
        self.cancel_checked_here.set()

    async def attach(self, worker: Worker, index: int) -> WorkerChannel:
        """What `WorkerSet._run_once` does for a started process, minus the process."""
        primary_end, worker_end = channel_pair()
        slot = self.workers._workers[index]
        channel = await WorkerChannel.open(
            primary_end, lambda op, m: self.workers._from_worker(slot, op, m)
        )
        slot.channel = channel
        reading = asyncio.create_task(channel.run())
        joining = asyncio.create_task(join_primary(worker_end.detach()))
        channel.notify("welcome", **WELCOME)
        worker.link.start(await asyncio.wait_for(joining, WAIT))
        self._attached.append((worker, channel, reading))
        self.readers[index] = reading
        return channel

    async def close(self) -> None:
        for worker, channel, reading in self._attached:
            channel.close()
            worker.link.close()
            await asyncio.wait_for(asyncio.gather(reading, return_exceptions=True), WAIT)
            await worker.finished()


@asynccontextmanager
async def primary_with(*workers: tuple[int, Worker]) -> AsyncIterator[Primary]:
    primary = Primary()
    try:
        for index, worker in workers:
            await primary.attach(worker, index)
        yield primary
    finally:
        await primary.close()


def test_a_cancel_for_the_primarys_key_is_checked_here() -> None:
    primary = Primary()
    primary.workers.route_cancel(0, 64, b"abcd")
    assert primary.cancelled_here == [(64, b"abcd")]


def test_a_cancel_for_a_worker_without_a_channel_is_dropped() -> None:
    primary = Primary()
    primary.workers.route_cancel(2, 66, b"abcd")  # worker 2 is not running
    primary.workers.route_cancel(40, 104, b"abcd")  # there is no worker 40
    assert primary.cancelled_here == []


def test_a_cancel_for_a_workers_key_reaches_its_session_there() -> None:
    async def test() -> None:
        one, two = Worker(1), Worker(2)
        async with primary_with((1, one), (2, two)) as primary:
            target, bystander = two.session("aaaa"), two.session("bbbb")
            wrong = bytes(b ^ 1 for b in target.cancel_secret)
            primary.workers.route_cancel(2, target.cancel_process_id, wrong)
            primary.workers.route_cancel(2, bystander.cancel_process_id, bystander.cancel_secret)
            await asyncio.wait_for(bystander.cancelled.wait(), WAIT)  # notices keep their order
            assert (target.cancels, bystander.cancels) == (0, 1)
            primary.workers.route_cancel(2, target.cancel_process_id, target.cancel_secret)
            await asyncio.wait_for(target.cancelled.wait(), WAIT)
            assert primary.cancelled_here == []

    run(test)


def test_a_cancel_another_worker_received_goes_through_the_primary() -> None:
    async def test() -> None:
        one, two = Worker(1), Worker(2)
        async with primary_with((1, one), (2, two)) as primary:
            target = two.session()
            pid = target.cancel_process_id
            # What forward_cancel in worker 1 does for a key whose owner is worker 2:
            owner = two.registry.owner(target.cancel_secret)
            assert owner == 2
            one.link.cancel_elsewhere(owner, pid, target.cancel_secret)
            await asyncio.wait_for(target.cancelled.wait(), WAIT)
            assert target.cancels == 1
            # ... and for one of the primary's own keys:
            one.link.cancel_elsewhere(0, 64, b"\x01\x02\x03\x04")
            await asyncio.wait_for(primary.cancel_checked_here.wait(), WAIT)
            assert primary.cancelled_here == [(64, b"\x01\x02\x03\x04")]

    run(test)


def test_ready_and_metrics_from_a_worker_are_kept_while_its_channel_lives() -> None:
    async def test() -> None:
        one = Worker(1)
        async with primary_with((1, one)) as primary:
            slot = primary.workers._workers[1]
            assert primary.workers.metrics_snapshots() == {}
            one.link.notify("metrics", text="pgw_up 1.0\n")
            one.link.notify("ready")
            await asyncio.wait_for(slot.ready.wait(), WAIT)
            assert primary.workers.metrics_snapshots() == {1: "pgw_up 1.0\n"}
            slot.channel = None  # as _run_once leaves it once the worker has exited
            assert primary.workers.metrics_snapshots() == {}

    run(test)


def test_the_primary_serves_the_workers_metrics_snapshots_labelled() -> None:
    async def test() -> None:
        one = Worker(1)
        async with primary_with((1, one)) as primary:
            snapshot = generate_latest(worker_registry(4, ())).decode()
            one.link.notify("metrics", text=snapshot)
            one.link.notify("ready")
            await asyncio.wait_for(primary.workers._workers[1].ready.wait(), WAIT)
            text = scrape(worker_registry(2, ()), primary.workers.metrics_snapshots())
            values = samples_of(text)
            assert values[("pgw_logins_total", "0")] == 2.0
            assert values[("pgw_logins_total", "1")] == 4.0

    run(test)


def test_an_unknown_op_from_a_worker_is_a_value_error() -> None:
    async def test() -> None:
        primary = Primary()
        slot = primary.workers._workers[1]
        with pytest.raises(ValueError, match="unknown op 'welcome' from worker 1"):
            await primary.workers._from_worker(slot, "welcome", {"op": "welcome"})
        assert await primary.workers._from_worker(slot, "ready", {"op": "ready"}) is None
        assert slot.ready.is_set()

    run(test)


def test_the_primary_lists_and_finds_the_sessions_of_every_worker() -> None:
    async def test() -> None:
        one, two = Worker(1), Worker(2)
        one.session("aaaa")
        two.session("bbbb")
        two.session("cccc").terminate(Ending(EndReason.CLIENT_LEFT))
        async with primary_with((1, one), (2, two)) as primary:
            found = await primary.workers.sessions()
            assert sorted(found, key=lambda i: i.session_id) == [
                make_info("aaaa"),
                make_info("bbbb"),
            ]
            assert await primary.workers.find("bbbb") == (2, make_info("bbbb"))
            assert await primary.workers.find("cccc") is None  # ended
            assert await primary.workers.find("zzzz") is None

    run(test)


def test_the_primary_ends_a_session_in_its_worker() -> None:
    async def test() -> None:
        two = Worker(2)
        live = two.session("bbbb")
        async with primary_with((2, two)) as primary:
            ending = Ending(EndReason.KILLED, "pgwarden: killed: why", detail="killed by erin")
            assert await primary.workers.end(2, "bbbb", ending) is True
            assert live.ending == ending
            assert await primary.workers.end(1, "bbbb", ending) is True  # worker 1 is not running

    run(test)


def test_a_worker_that_is_gone_is_left_out_of_the_list() -> None:
    async def test() -> None:
        one, two = Worker(1), Worker(2)
        one.session("aaaa")
        two.session("bbbb")
        async with primary_with((1, one), (2, two)) as primary:
            two.link.close()
            await asyncio.wait_for(primary.readers[2], WAIT)  # the primary sees the EOF
            channel = primary.workers._workers[2].channel
            assert channel is not None
            assert channel.closed
            assert [info.session_id for info in await primary.workers.sessions()] == ["aaaa"]

    run(test)


def test_ending_a_session_whose_worker_dies_meanwhile_counts_as_ended() -> None:
    async def test() -> None:
        one = Worker(1)
        live = one.session("aaaa")
        live.ends_when_told = False  # the session hangs on, then its whole process goes
        async with primary_with((1, one)) as primary:
            ending = Ending(EndReason.KILLED, "pgwarden: killed", detail="killed by erin")
            asking = asyncio.create_task(primary.workers.end(1, "aaaa", ending))
            await asyncio.wait_for(_told(live), WAIT)
            one.link.close()  # the worker process exits: its channel closes
            assert await asyncio.wait_for(asking, WAIT) is True

    run(test)


async def _told(session: FakeSession) -> None:
    while session.ending is None:
        await asyncio.sleep(0.001)


def test_readiness_fails_while_a_workers_audit_log_fails() -> None:
    async def test() -> None:
        one = Worker(1)
        async with primary_with((1, one)) as primary:
            slot = primary.workers._workers[1]
            assert primary.workers.problems() is None
            one.link.notify("metrics", text="pgwarden_audit_healthy 0.0\n", audit_healthy=False)
            one.link.notify("ready")
            await asyncio.wait_for(slot.ready.wait(), WAIT)
            assert primary.workers.problems() == "worker 1 cannot write its audit log"
            one.link.notify("metrics", text="pgwarden_audit_healthy 1.0\n", audit_healthy=True)
            one.link.notify("ready")
            await asyncio.wait_for(_snapshot_is(slot, "pgwarden_audit_healthy 1.0\n"), WAIT)
            assert primary.workers.problems() is None

    run(test)


async def _snapshot_is(slot: object, text: str) -> None:
    while getattr(slot, "metrics", None) != text:
        await asyncio.sleep(0.001)
