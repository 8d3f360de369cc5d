"""A worker's end of the channel (`PrimaryLink`), driven by a real channel inside one event
loop, no process started: welcome and secrets, cancels, stop, reload, sessions, end.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from proxy.runtime.auditing import SecretsToRedact
from proxy.session.session import Ending, EndReason
from proxy.workers import link as primary_link_module
from proxy.workers.channel import ChannelClosed, WorkerChannel, channel_pair
from proxy.workers.link import Welcome, join_primary
from proxy.workers.shares import info_to_json
from tests.fixtures.workers import (
    START,
    WAIT,
    Worker,
    ignore,
    make_info,
    primary_of,
    run,
)


def test_the_welcome_gives_the_mock_secret_and_its_secrets_are_remembered() -> None:
    async def test() -> None:
        worker = Worker()
        async with primary_of(worker):
            assert worker.remembered == [("pw-early", datetime(2026, 1, 5, 10, 0, tzinfo=UTC))]
            assert worker.stops == 0

    run(test)


def test_joining_gives_up_when_no_welcome_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(primary_link_module, "WELCOME_TIMEOUT", 0.05)

    async def test() -> None:
        primary_end, worker_end = channel_pair()
        primary = await WorkerChannel.open(primary_end, ignore)
        reading = asyncio.create_task(primary.run())
        with pytest.raises(TimeoutError):
            await join_primary(worker_end.detach())
        await asyncio.wait_for(reading, WAIT)  # the worker closed its end: the primary sees it
        assert primary.closed

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


async def welcomed_with(**fields: object) -> Welcome:
    """What `join_primary` makes of a welcome with these fields, sent over a real channel."""
    primary_end, worker_end = channel_pair()
    primary = await WorkerChannel.open(primary_end, ignore)
    joining = asyncio.create_task(join_primary(worker_end.detach()))
    primary.notify("welcome", **fields)
    try:
        return await asyncio.wait_for(joining, WAIT)
    finally:
        primary.close()


def test_welcome_and_secret_are_remembered_when_handled_directly() -> None:
    async def test() -> None:
        worker = Worker()
        welcome = await welcomed_with(secrets=[["a", "2026-01-05T10:00:00Z"]], mock_secret="ab")
        assert welcome.secrets == [("a", datetime(2026, 1, 5, 10, 0, tzinfo=UTC))]
        bare = await welcomed_with(mock_secret="ab")  # no secrets at all: nothing to remember
        assert bare.secrets == []
        expires_at = "2026-01-05T11:00:00+00:00"
        assert await worker.handle("secret", password="b", expires_at=expires_at) is None
        assert worker.remembered == [("b", datetime(2026, 1, 5, 11, 0, tzinfo=UTC))]
        welcome.writer.close()
        bare.writer.close()

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
        with pytest.raises(ValueError):  # noqa: PT011 - each case fails in its own words
            await welcomed_with(secrets=secrets, mock_secret="ab")

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


def test_joining_fails_at_once_when_the_primary_closes_before_its_welcome() -> None:
    async def test() -> None:
        primary_end, worker_end = channel_pair()
        primary_end.close()  # the primary died right after starting this worker
        with pytest.raises(ChannelClosed, match="before welcome"):
            await asyncio.wait_for(join_primary(worker_end.detach()), WAIT / 2)

    run(test)


def test_joining_refuses_a_first_line_that_is_not_the_welcome() -> None:
    async def test() -> None:
        primary_end, worker_end = channel_pair()
        primary = await WorkerChannel.open(primary_end, ignore)
        joining = asyncio.create_task(join_primary(worker_end.detach()))
        primary.notify("secret", password="pw-1", expires_at="2026-01-05T11:00:00+00:00")
        with pytest.raises(ValueError, match="first line must be its welcome"):
            await asyncio.wait_for(joining, WAIT)
        primary.close()

    run(test)


def test_a_secret_without_a_utc_offset_is_refused_before_it_is_remembered() -> None:
    secrets = SecretsToRedact()
    with pytest.raises(ValueError, match="UTC offset"):
        secrets.remember_password("pw-naive", datetime(2026, 1, 5, 11, 0), START)
    secrets.remember_password("pw-aware", START + timedelta(hours=1), START)
    assert list(secrets()) == ["pw-aware"]  # the refusal left nothing behind to trip on
