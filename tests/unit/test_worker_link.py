"""Both ends of the worker channel wired to each other inside one event loop, no process
started: a worker's end (`PrimaryLink`: secrets, cancels, stop, reload, sessions, end) and the
primary's (`WorkerSet`: routing, metrics snapshots, and the calls the API makes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import (
    generate_latest,
)

from proxy.auditing import SecretsToRedact
from proxy.session import primary_link as primary_link_module
from proxy.session.channel import ChannelClosed, Message, WorkerChannel, channel_pair
from proxy.session.primary_link import PrimaryLink
from proxy.session.registry import SessionRegistry
from proxy.session.session import Ending, EndReason
from proxy.session.workers import WorkerSet
from proxy.workers import info_to_json
from tests.fixtures.workers import (
    START,
    WAIT,
    FakeSession,
    ignore,
    make_info,
    run,
    samples_of,
    scrape,
    worker_registry,
)

# --- a worker's end: PrimaryLink ------------------------------------------------------------


class Worker:
    """A worker's state as PrimaryLink sees it: registry, remembered secrets, stop, reload."""

    def __init__(
        self, index: int = 1, remember: Callable[[str, datetime], None] | None = None
    ) -> None:
        self.registry: SessionRegistry[Any] = SessionRegistry(worker=index)
        self.remembered: list[tuple[str, datetime]] = []
        self.stops = 0
        self.stopped = asyncio.Event()
        self.reloads = 0
        self.link = PrimaryLink(self.registry, remember or self._remember, self._stop, self._reload)

    def _remember(self, password: str, expires_at: datetime) -> None:
        self.remembered.append((password, expires_at))

    def _stop(self) -> None:
        self.stops += 1
        self.stopped.set()

    def _reload(self) -> None:
        self.reloads += 1

    def session(self, session_id: str = "5e55a0", *, ends_when_told: bool = True) -> FakeSession:
        pid, secret = self.registry.new_cancel_key()
        live = FakeSession(make_info(session_id), pid, secret, ends_when_told=ends_when_told)
        self.registry.add(live)
        return live

    async def handle(self, op: str, **fields: object) -> Message | None:
        return await self.link._handle(op, {"op": op, **fields})

    async def finished(self) -> BaseException | None:
        """Wait for the link's reader to end; what it raised, if anything."""
        reader = self.link._reader
        assert reader is not None, "connect() was not called"
        (outcome,) = await asyncio.wait_for(asyncio.gather(reader, return_exceptions=True), WAIT)
        return outcome if isinstance(outcome, BaseException) else None


WELCOME: Message = {"secrets": [["pw-early", "2026-01-05T10:00:00+00:00"]], "mock_secret": "ab"}


@asynccontextmanager
async def primary_of(worker: Worker) -> AsyncIterator[WorkerChannel]:
    """The primary's end of a real channel to `worker`, after its welcome."""
    primary_end, worker_end = channel_pair()
    primary = await WorkerChannel.open(primary_end, ignore)
    reading = asyncio.create_task(primary.run())
    connecting = asyncio.create_task(worker.link.connect(worker_end.detach()))
    primary.notify("welcome", **WELCOME)
    try:
        assert await asyncio.wait_for(connecting, WAIT) == {"op": "welcome", **WELCOME}
        yield primary
    finally:
        primary.close()
        worker.link.close()
        await asyncio.wait_for(asyncio.gather(reading, return_exceptions=True), WAIT)
        await worker.finished()


def test_connect_returns_the_welcome_and_remembers_its_secrets() -> None:
    async def test() -> None:
        worker = Worker()
        async with primary_of(worker):
            assert worker.remembered == [("pw-early", datetime(2026, 1, 5, 10, 0, tzinfo=UTC))]
            assert worker.stops == 0

    run(test)


def test_connect_gives_up_when_no_welcome_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(primary_link_module, "WELCOME_TIMEOUT", 0.05)

    async def test() -> None:
        worker = Worker()
        primary_end, worker_end = channel_pair()
        primary = await WorkerChannel.open(primary_end, ignore)
        reading = asyncio.create_task(primary.run())
        with pytest.raises(TimeoutError):
            await worker.link.connect(worker_end.detach())
        primary.close()
        await asyncio.wait_for(reading, WAIT)
        assert await worker.finished() is None
        assert worker.stops == 1  # the primary closed the channel

    run(test)


def test_a_secret_sent_later_is_remembered_in_order() -> None:
    async def test() -> None:
        worker = Worker()
        async with primary_of(worker) as primary:
            primary.notify("secret", password="pw-1", expires_at="2026-01-05T11:00:00+00:00")
            primary.notify("secret", password="pw-2", expires_at="2026-01-05T12:00:00+00:00")
            primary.notify("stop")
            await asyncio.wait_for(worker.stopped.wait(), WAIT)
        assert [password for password, _ in worker.remembered] == ["pw-early", "pw-1", "pw-2"]
        assert worker.remembered[2][1] == datetime(2026, 1, 5, 12, 0, tzinfo=UTC)

    run(test)


def test_welcome_and_secret_are_remembered_when_handled_directly() -> None:
    async def test() -> None:
        worker = Worker()
        assert await worker.handle("welcome", secrets=[["a", "2026-01-05T10:00:00Z"]]) is None
        assert await worker.handle("welcome") is None  # no secrets at all: nothing to remember
        expires_at = "2026-01-05T11:00:00+00:00"
        assert await worker.handle("secret", password="b", expires_at=expires_at) is None
        assert worker.remembered == [
            ("a", datetime(2026, 1, 5, 10, 0, tzinfo=UTC)),
            ("b", datetime(2026, 1, 5, 11, 0, tzinfo=UTC)),
        ]

    run(test)


@pytest.mark.parametrize(
    "fields",
    [
        {"password": None, "expires_at": "2026-01-05T11:00:00+00:00"},
        {"password": 42, "expires_at": "2026-01-05T11:00:00+00:00"},
        {"password": "pw", "expires_at": "soon"},
        {"password": "pw"},
        {},
    ],
    ids=["no-password", "password-not-text", "bad-time", "no-time", "empty"],
)
def test_a_malformed_secret_is_a_value_error(fields: dict[str, object]) -> None:
    async def test() -> None:
        worker = Worker()
        with pytest.raises(ValueError):  # noqa: PT011 - each case fails in its own words
            await worker.handle("secret", **fields)
        assert worker.remembered == []

    run(test)


@pytest.mark.parametrize(
    "secrets",
    [
        [["pw"]],
        [["pw", "2026-01-05T10:00:00+00:00", "x"]],
        [[1, "2026-01-05T10:00:00+00:00"]],
        ["pw"],
        [["pw", "never"]],
    ],
    ids=["short", "long", "password-not-text", "not-a-pair", "bad-time"],
)
def test_a_welcome_with_a_malformed_secret_is_a_value_error(secrets: list[object]) -> None:
    async def test() -> None:
        worker = Worker()
        with pytest.raises(ValueError):  # noqa: PT011 - each case fails in its own words
            await worker.handle("welcome", secrets=secrets)

    run(test)


def test_a_routed_cancel_needs_the_right_secret() -> None:
    async def test() -> None:
        worker = Worker()
        live = worker.session()
        other = worker.session("0f0f0f")
        wrong = bytes(b ^ 0xFF for b in live.cancel_secret)
        await worker.handle("cancel", process_id=live.cancel_process_id, secret=wrong.hex())
        await worker.handle("cancel", process_id=live.cancel_process_id + 1, secret=wrong.hex())
        pid = other.cancel_process_id
        await worker.handle("cancel", process_id=pid, secret=live.cancel_secret.hex())
        assert (live.cancels, other.cancels) == (0, 0)
        pid = live.cancel_process_id
        await worker.handle("cancel", process_id=pid, secret=live.cancel_secret.hex())
        assert (live.cancels, other.cancels) == (1, 0)

    run(test)


@pytest.mark.parametrize(
    "fields",
    [
        {"process_id": "7", "secret": "abcd"},
        {"process_id": 7},
        {"secret": "abcd"},
        {"process_id": 7, "secret": "not hex"},
    ],
    ids=["pid-not-int", "no-secret", "no-pid", "secret-not-hex"],
)
def test_a_malformed_cancel_is_a_value_error(fields: dict[str, object]) -> None:
    async def test() -> None:
        worker = Worker()
        live = worker.session()
        with pytest.raises(ValueError):  # noqa: PT011 - each case fails in its own words
            await worker.handle("cancel", **fields)
        assert live.cancels == 0

    run(test)


def test_stop_and_reload_call_back_the_worker() -> None:
    async def test() -> None:
        worker = Worker()
        assert await worker.handle("reload") is None
        assert (worker.reloads, worker.stops) == (1, 0)
        assert await worker.handle("stop") is None
        assert (worker.reloads, worker.stops) == (1, 1)

    run(test)


def test_an_unknown_op_from_the_primary_is_a_value_error() -> None:
    async def test() -> None:
        worker = Worker()
        with pytest.raises(ValueError, match="unknown op 'shutdown'"):
            await worker.handle("shutdown")
        assert (worker.reloads, worker.stops) == (0, 0)

    run(test)


def test_the_worker_lists_only_its_live_sessions() -> None:
    async def test() -> None:
        worker = Worker()
        worker.session("aaaa")
        ended = worker.session("bbbb")
        ended.terminate(Ending(EndReason.CLIENT_LEFT))
        answer = await worker.handle("sessions")
        assert answer == {"sessions": [info_to_json(make_info("aaaa"))]}

    run(test)


def test_the_worker_stops_when_the_primary_closes_the_channel() -> None:
    async def test() -> None:
        worker = Worker()
        async with primary_of(worker) as primary:
            primary.close()
            assert await worker.finished() is None
            assert worker.stops == 1

    run(test)


def test_a_worker_closing_its_own_link_is_not_told_to_stop_again() -> None:
    async def test() -> None:
        worker = Worker()
        async with primary_of(worker):
            worker.link.close()  # the worker is stopping already (serve.py on SIGTERM)
            assert await worker.finished() is None
            assert worker.stops == 0

    run(test)


def test_the_worker_stops_when_the_primary_breaks_the_protocol() -> None:
    async def test() -> None:
        worker = Worker()
        async with primary_of(worker) as primary:
            primary.notify("no-such-op")  # ValueError in the worker: the channel is closed
            assert await worker.finished() is None
            assert worker.stops == 1

    run(test)


def test_the_worker_stops_whatever_breaks_its_channel() -> None:
    # Whatever breaks the channel, the worker stops: a worker without its primary serves
    # sessions nobody can list or end. Trigger: a `secret` whose expiry has no UTC offset is
    # refused (ValueError), which ends the channel as any malformed line does.
    async def test() -> None:
        secrets = SecretsToRedact()
        worker = Worker(remember=lambda pw, at: secrets.remember_password(pw, at, START))
        async with primary_of(worker) as primary:
            primary.notify("secret", password="pw-naive", expires_at="2026-01-05T11:00:00")
            raised = await worker.finished()
            assert worker.link._channel is not None
            assert worker.link._channel.closed  # the channel is dead either way
            assert worker.stops == 1, f"worker not stopped; its channel reader raised {raised!r}"

    run(test)


def test_end_terminates_the_session_and_waits_for_it() -> None:
    async def test() -> None:
        worker = Worker()
        live = worker.session()
        answer = await worker.handle(
            "end", session_id=live.session_id, message="killed by erin", detail="erin: why"
        )
        assert answer == {"ended": True}
        assert live.ending == Ending(EndReason.KILLED, "killed by erin", detail="erin: why")
        assert await worker.handle("end", session_id="nope") == {"ended": True}  # already gone
        assert await worker.handle("end") == {"ended": True}

    run(test)


def test_end_says_so_when_the_session_outlasts_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(primary_link_module, "END_WAIT", 0.05)

    async def test() -> None:
        worker = Worker()
        stuck = worker.session(ends_when_told=False)
        assert await worker.handle("end", session_id=stuck.session_id) == {"ended": False}
        assert stuck.ending is not None
        assert stuck.ending.reason is EndReason.KILLED

    run(test)


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
        connecting = asyncio.create_task(worker.link.connect(worker_end.detach()))
        channel.notify("welcome", **WELCOME)
        await asyncio.wait_for(connecting, WAIT)
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
            one.link.cancel_elsewhere(SessionRegistry.owner(pid), pid, target.cancel_secret)
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


def test_connect_fails_at_once_when_the_primary_closes_before_its_welcome() -> None:
    async def test() -> None:
        worker = Worker()
        primary_end, worker_end = channel_pair()
        primary_end.close()  # the primary died right after starting this worker
        with pytest.raises(ChannelClosed, match="before welcome"):
            await asyncio.wait_for(worker.link.connect(worker_end.detach()), WAIT / 2)
        assert await worker.finished() is None
        assert worker.stops == 1

    run(test)


def test_a_secret_without_a_utc_offset_is_refused_before_it_is_remembered() -> None:
    secrets = SecretsToRedact()
    with pytest.raises(ValueError, match="UTC offset"):
        secrets.remember_password("pw-naive", datetime(2026, 1, 5, 11, 0), START)
    secrets.remember_password("pw-aware", START + timedelta(hours=1), START)
    assert list(secrets()) == ["pw-aware"]  # the refusal left nothing behind to trip on


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
            one.link.notify("metrics", text="# TYPE pgwarden_audit_healthy gauge\n"
                            "pgwarden_audit_healthy 0.0\n")  # fmt: skip
            one.link.notify("ready")
            await asyncio.wait_for(slot.ready.wait(), WAIT)
            assert primary.workers.problems() == "worker 1 cannot write its audit log"
            one.link.notify("metrics", text="pgwarden_audit_healthy 1.0\n")
            one.link.notify("ready")
            await asyncio.wait_for(_snapshot_is(slot, "pgwarden_audit_healthy 1.0\n"), WAIT)
            assert primary.workers.problems() is None

    run(test)


async def _snapshot_is(slot: object, text: str) -> None:
    while getattr(slot, "metrics", None) != text:
        await asyncio.sleep(0.001)
