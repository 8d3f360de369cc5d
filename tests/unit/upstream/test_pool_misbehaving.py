"""The upstream pool (proxy/upstream/pool.py) against a scripted, misbehaving database.

Each test runs `UpstreamPool` against tests/fixtures/fake_upstream.py on loopback, in its own uvloop
event loop, the neutral login made by the real `connect_upstream`. Checked: the neutral login and
the client's settings (Bind values, never SQL text) and greeting; a backend whose set_config or
DISCARD ALL answer is wrong in any way (error, tag, sequence, status, extra bytes, close, stall) is
never kept, and one that speaks while idle is never handed out; no answer holds pgwarden beyond its
bound; max_idle, max_lifetime, idle_timeout, prune() and clear() end backends with Terminate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import struct
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from proxy.config import PoolSettings
from proxy.policy.models import UpstreamTlsMode
from proxy.upstream import pool as pool_module
from proxy.upstream.connect import (
    StartupParameters,
    UpstreamConnection,
    UpstreamError,
    UpstreamLogin,
    connect_upstream,
)
from proxy.upstream.pool import UpstreamPool
from tests.fixtures.fake_upstream import (
    AUTH_OK,
    STARTUP,
    Close,
    Expect,
    FakeUpstream,
    Received,
    Reply,
    Script,
    Send,
    Sleep,
    Step,
    auth,
    backend_key,
    cstring,
    error_response,
    fatal,
    message,
    notice,
    parameter_status,
    ready,
)

TEST_TIMEOUT = 20.0  # the whole test body, whatever happens
TIMEOUT = 5.0  # login and set_config bound: every failure here is immediate except the stalls
STALL = 0.15  # the bound a stall test injects: short, since each test waits it out
ROLE, DATABASE, TARGET = "orders_ro", "orders", "orders-db"
ALICE: StartupParameters = (("application_name", "pgwarden:alice:r1"), ("client_encoding", "UTF8"))
BOB: StartupParameters = (("application_name", "pgwarden:bob:r2"), ("DateStyle", "ISO, DMY"))
NEUTRAL = {"application_name": "pgwarden", "client_encoding": "SQL_ASCII", "DateStyle": "ISO, MDY"}


T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(main, TEST_TIMEOUT))


class Harness:
    """A pool on a hand-driven clock, and the fake database its backends log in to."""

    def __init__(self, fake: FakeUpstream, **settings: Any) -> None:
        self.fake, self.now = fake, 1000.0
        self.pool = UpstreamPool(PoolSettings(enabled=True, **settings), lambda: self.now)

    async def checkout(
        self, parameters: StartupParameters = ALICE, timeout: float = TIMEOUT
    ) -> UpstreamConnection:
        login = UpstreamLogin("127.0.0.1", self.fake.port, DATABASE, ROLE, "pw",
                              UpstreamTlsMode.DISABLE, target=TARGET,
                              startup_parameters=parameters)  # fmt: skip
        connect = functools.partial(connect_upstream, connect_timeout=TIMEOUT)
        return await self.pool.connect(login, connect, timeout=timeout)


@contextlib.asynccontextmanager
async def harness(*scripts: Script, **settings: Any) -> AsyncIterator[Harness]:
    async with FakeUpstream(*scripts) as fake:
        kept = Harness(fake, **settings)
        try:
            yield kept
        finally:
            kept.pool.clear()


def hang_up(conn: UpstreamConnection) -> None:
    """What the session does with a backend the pool did not keep."""
    conn.peer.write(message(b"X"))
    conn.peer.close()


# --- the fake database's side --------------------------------------------------------------------


def bind_values(payload: bytes) -> list[str]:
    """The text parameter values of a Bind message (decoded here, not with proxy.wire)."""
    pos = payload.index(b"\0") + 1
    pos = payload.index(b"\0", pos) + 1
    (formats,) = struct.unpack_from("!h", payload, pos)
    pos += 2 + 2 * formats
    (count,) = struct.unpack_from("!h", payload, pos)
    pos += 2
    values = []
    for _ in range(count):
        (length,) = struct.unpack_from("!i", payload, pos)
        values.append(payload[pos + 4 : pos + 4 + length].decode())
        pos += 4 + length
    return values


def settings_sent(received: list[Received]) -> list[tuple[str, str]]:
    """The (name, value) pairs of the last set_config exchange."""
    values = bind_values([r for r in received if r.kind == b"B"][-1].payload)
    return list(zip(values[0::2], values[1::2], strict=True))


def complete(tag: str) -> bytes:
    return message(b"C", cstring(tag))


def data_row(*values: str) -> bytes:
    cells = b"".join(struct.pack("!i", len(v)) + v.encode() for v in values)
    return message(b"D", struct.pack("!h", len(values)) + cells)


def applied(received: list[Received]) -> bytes:
    """A faithful answer to set_config: the row, then a report of each setting, then idle."""
    pairs = settings_sent(received)
    reports = b"".join(parameter_status(name, value) for name, value in pairs)
    row = data_row(*(value for _, value in pairs))
    return message(b"1") + message(b"2") + row + complete("SELECT 1") + reports + ready()


NEUTRAL_GREETING = b"".join(parameter_status(n, v) for n, v in NEUTRAL.items())
LOGIN: list[Step] = [
    Expect(STARTUP),
    Send(auth(AUTH_OK) + parameter_status("server_version", "16.4") + NEUTRAL_GREETING
         + backend_key() + ready()),
]  # fmt: skip
SET_CONFIG: list[Step] = [Expect(b"P"), Expect(b"B"), Expect(b"E"), Expect(b"S")]
APPLIED: list[Step] = [*LOGIN, *SET_CONFIG, Reply(applied)]
# Postgres reports the settings RESET ALL changed back, before ReadyForQuery.
RESET: list[Step] = [Expect(b"Q"), Send(complete("DISCARD ALL") + NEUTRAL_GREETING + ready())]


def greeting_of(conn: UpstreamConnection) -> dict[str, str]:
    """The ParameterStatus frames the client would get, each name once, nothing else."""
    seen: dict[str, str] = {}
    for frame in conn.greeting:
        assert frame[:1] == b"S"
        name, value, _ = frame[5:].split(b"\0")
        assert name.decode() not in seen
        seen[name.decode()] = value.decode()
    return seen


# --- connect: the neutral login and the client's settings ----------------------------------------


def test_neutral_login_then_settings_then_reuse_of_the_reset_backend() -> None:
    async def main() -> None:
        async with harness([*APPLIED, *RESET, *SET_CONFIG, Reply(applied)]) as h:
            alice = await h.checkout()
            seen = h.fake.connections[0]
            assert seen.received[0].parameters == {
                "user": ROLE, "database": DATABASE, "application_name": "pgwarden"
            }  # fmt: skip
            assert settings_sent(seen.received) == list(ALICE)
            parse = next(r for r in seen.received if r.kind == b"P").payload
            assert b"set_config($1, $2, false)" in parse
            assert (b"alice" in parse, b"UTF8" in parse) == (False, False)  # values: Bind only
            assert greeting_of(alice) == {"server_version": "16.4", **NEUTRAL, **dict(ALICE)}
            assert alice.pending == b""

            assert await h.pool.give_back(alice)
            assert h.pool.idle_count == 1
            h.now += 10
            bob = await h.checkout(BOB)
            assert len(h.fake.connections) == 1  # no new TCP connection, no new login
            assert (h.pool.reused, h.pool.idle_count) == (1, 0)
            assert bob.peer is alice.peer
            assert settings_sent(seen.received) == list(BOB)
            # alice's client_encoding does not reach bob: DISCARD ALL reported it reset
            assert greeting_of(bob) == {"server_version": "16.4", **NEUTRAL, **dict(BOB)}
            hang_up(bob)
            await seen.wait_client_closed()

    run(main())


def test_a_reset_the_server_does_not_report_still_returns_to_the_neutral_settings() -> None:
    """The greeting of a reused backend starts from its neutral login's settings, not from the
    previous session's, even if DISCARD ALL is answered without ParameterStatus reports."""
    silent_reset: list[Step] = [Expect(b"Q"), Send(complete("DISCARD ALL") + ready())]

    async def main() -> None:
        async with harness([*APPLIED, *silent_reset, *SET_CONFIG, Reply(applied)]) as h:
            alice = await h.checkout()
            assert await h.pool.give_back(alice)
            bob = await h.checkout(BOB)
            assert greeting_of(bob) == {"server_version": "16.4", **NEUTRAL, **dict(BOB)}
            hang_up(bob)

    run(main())


def test_refused_setting_is_relayed_and_the_backend_ended() -> None:
    text = 'invalid value for parameter "client_encoding": "UTF8"'
    refusal = error_response(("S", "ERROR"), ("V", "ERROR"), ("C", "22023"), ("M", text))

    async def main() -> None:
        async with harness([*LOGIN, *SET_CONFIG, Send(refusal + ready())]) as h:
            with pytest.raises(UpstreamError) as info:
                await h.checkout()
            await h.fake.connections[0].wait_client_closed()
            assert h.pool.idle_count == 0
        assert info.value.refused
        assert info.value.sqlstate == "22023"
        assert text in info.value.message

    run(main())


def wrong(*messages: bytes) -> Step:
    return Send(b"".join(messages))


ROW, DONE = data_row("x"), complete("SELECT 1")
PARSED, BOUND = message(b"1"), message(b"2")
WRONG_SET_CONFIG = [
    pytest.param(wrong(PARSED, BOUND, DONE, ready()), id="missing-data-row"),
    pytest.param(wrong(PARSED, BOUND, ROW, DONE, DONE, ready()), id="extra-command-complete"),
    pytest.param(wrong(PARSED, BOUND, ROW, DONE, ready(b"T")), id="ready-in-transaction"),
    pytest.param(wrong(PARSED, BOUND, ROW, DONE, ready(b"E")), id="ready-failed-transaction"),
    pytest.param(wrong(ready()), id="ready-alone"),
    pytest.param(wrong(BOUND, PARSED, ROW, DONE, ready()), id="out-of-order"),
    pytest.param(wrong(PARSED, BOUND, ROW, DONE, ready(b"X")), id="invalid-ready-status"),
    pytest.param(wrong(error_response(("M", "no sqlstate")), ready()), id="error-no-sqlstate"),
    pytest.param(wrong(PARSED, b"2\x7f\xff\xff\xff"), id="negative-length"),
    pytest.param(Close(), id="server-closes"),
    pytest.param(wrong(PARSED, BOUND), id="stall"),
]


@pytest.mark.parametrize("answer", WRONG_SET_CONFIG)
def test_wrong_answer_to_set_config_fails_the_login_within_its_bound(answer: Step) -> None:
    async def main() -> None:
        async with harness([*LOGIN, *SET_CONFIG, answer]) as h:
            with pytest.raises(UpstreamError) as info:
                await h.checkout(timeout=STALL)
            if not isinstance(answer, Close):
                await h.fake.connections[0].wait_client_closed()
            assert h.pool.idle_count == 0
        assert not info.value.refused
        assert info.value.sqlstate in {"08001", "08006"}
        assert info.value.message.startswith("pgwarden: could not log in to the database for")

    run(main())


# --- give_back: DISCARD ALL must be answered exactly ---------------------------------------------


def give_back_against(answer: list[Step]) -> tuple[bool, int, float]:
    """Whether the pool kept the backend after `answer` to DISCARD ALL, its idle count then,
    and how long give_back took."""

    async def main() -> tuple[bool, int, float]:
        async with harness([*APPLIED, Expect(b"Q"), *answer]) as h:
            conn = await h.checkout()
            start = asyncio.get_running_loop().time()
            kept = await h.pool.give_back(conn)
            took = asyncio.get_running_loop().time() - start
            idle = h.pool.idle_count
            if not kept:
                hang_up(conn)
            h.pool.clear()
            if not any(isinstance(step, Close) for step in answer):  # else the fake hung up
                await h.fake.connections[0].wait_client_closed()
        return kept, idle, took

    return run(main())


DISCARDED, IDLE = complete("DISCARD ALL"), ready()
BAD_RESETS = [
    pytest.param([wrong(error_response(("C", "25001"), ("M", "no")), IDLE)], id="error-response"),
    pytest.param([wrong(error_response(("M", "no sqlstate")), IDLE)], id="error-no-sqlstate"),
    pytest.param([wrong(complete("SELECT 1"), IDLE)], id="wrong-tag"),
    pytest.param([wrong(complete("DISCARD ALL!"), IDLE)], id="tag-with-suffix"),
    pytest.param([wrong(DISCARDED, ready(b"T"))], id="ready-in-transaction"),
    pytest.param([wrong(DISCARDED, ready(b"E"))], id="ready-failed-transaction"),
    pytest.param([wrong(DISCARDED, ready(b"?"))], id="invalid-ready-status"),
    pytest.param([wrong(IDLE)], id="ready-alone"),
    pytest.param([wrong(DISCARDED, DISCARDED, IDLE)], id="two-command-completes"),
    pytest.param([wrong(ROW, DISCARDED, IDLE)], id="data-row"),
    pytest.param([wrong(message(b"I"), IDLE)], id="empty-query-response"),
    pytest.param([wrong(DISCARDED, IDLE, notice("more"))], id="bytes-after-ready"),
    pytest.param([wrong(DISCARDED, IDLE, b"Z")], id="partial-message-after-ready"),
    pytest.param([wrong(DISCARDED, b"Z\x7f\xff\xff\xff")], id="negative-length"),
    pytest.param([wrong(DISCARDED, message(b"S", b"no-terminator"))], id="malformed-status"),
    pytest.param([Close()], id="server-closes"),
    pytest.param([wrong(DISCARDED), Close()], id="closes-before-ready"),
    pytest.param([wrong(DISCARDED, fatal("57P01", "terminating"))], id="fatal-then-eof"),
    pytest.param([], id="stall"),
    pytest.param([wrong(notice("busy") * 200)], id="endless-notices"),
    pytest.param([Sleep(2 * STALL), wrong(DISCARDED, IDLE)], id="late-answer"),
]


@pytest.mark.parametrize("answer", BAD_RESETS)
def test_backend_with_a_wrong_reset_answer_is_not_kept(
    answer: list[Step], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "RESET_TIMEOUT", STALL)
    kept, idle, took = give_back_against(answer)
    assert (kept, idle) == (False, 0)
    assert took < STALL + 0.5  # a stalled reset costs RESET_TIMEOUT, no more


NOTIFICATION = message(b"A", struct.pack("!i", 7) + cstring("chan") + cstring("payload"))
ASYNC = notice("hi") + DISCARDED + parameter_status("TimeZone", "UTC") + NOTIFICATION + notice("")
GOOD_RESETS = [
    pytest.param([Send(ASYNC + IDLE)], id="async-messages"),
    pytest.param([Send(DISCARDED[:3]), Sleep(0.05), wrong(DISCARDED[3:], IDLE)], id="split"),
]


@pytest.mark.parametrize("answer", GOOD_RESETS)
def test_correct_reset_answer_is_kept(answer: list[Step]) -> None:
    assert give_back_against(answer)[:2] == (True, 1)


# --- limits: max_idle, max_lifetime, idle_timeout, prune, clear ----------------------------------

TERMINATED: list[Step] = [Expect(b"X")]  # a script ending so fails if anything but Terminate comes


def test_max_idle_holds_when_two_resets_run_at_once() -> None:
    async def main() -> None:
        async with harness([*APPLIED, *RESET], [*APPLIED, *RESET], max_idle=1) as h:
            first, second = await h.checkout(), await h.checkout()
            kept = await asyncio.gather(h.pool.give_back(first), h.pool.give_back(second))
            assert sorted(kept) == [False, True]
            assert h.pool.idle_count == 1
            hang_up(second if kept[0] else first)

    run(main())


def test_max_idle_ends_the_extra_backend_without_a_reset() -> None:
    async def main() -> None:
        async with harness([*APPLIED, *RESET], [*APPLIED, *TERMINATED], max_idle=1) as h:
            first, second = await h.checkout(), await h.checkout()
            assert await h.pool.give_back(first)
            assert not await h.pool.give_back(second)  # no DISCARD ALL sent
            hang_up(second)
            await h.fake.connections[1].wait_client_closed()
            assert h.pool.idle_count == 1

    run(main())


def test_max_lifetime_and_idle_timeout_end_backends() -> None:
    async def main() -> None:
        kept: Script = [*APPLIED, *RESET, *TERMINATED]
        once: Script = [*APPLIED, *TERMINATED]
        async with harness(once, kept, kept, once, idle_timeout=60.0, max_lifetime=1800.0) as h:
            old = await h.checkout()
            h.now += 1800.0
            assert not await h.pool.give_back(old)  # past max_lifetime: no DISCARD ALL sent
            hang_up(old)

            idle = await h.checkout()
            assert await h.pool.give_back(idle)
            h.now += 59.0
            h.pool.prune()
            assert h.pool.idle_count == 1
            h.now += 1.0
            h.pool.prune()
            assert h.pool.idle_count == 0
            await h.fake.connections[1].wait_client_closed()
            assert h.fake.connections[1].kinds()[-1] == b"X"

            aging = await h.checkout()
            assert await h.pool.give_back(aging)
            h.now += 1800.0  # not pruned: connect() checks the lifetime itself
            hang_up(await h.checkout())
            assert (h.pool.reused, len(h.fake.connections)) == (0, 4)
            await h.fake.connections[2].wait_client_closed()
            assert h.fake.connections[2].kinds()[-1] == b"X"
            await h.fake.connections[0].wait_client_closed()

    run(main())


def test_idle_backend_that_sends_anything_is_not_handed_out() -> None:
    async def main() -> None:
        dying = [*APPLIED, *RESET, Sleep(0.2), Send(fatal("57P01", "terminating connection"))]
        async with harness(dying, APPLIED) as h:
            conn = await h.checkout()
            assert await h.pool.give_back(conn)
            async with asyncio.timeout(TIMEOUT):
                while not conn.peer.has_buffered_data():
                    await asyncio.sleep(0.01)
            assert not conn.peer.is_closed  # the fake keeps it open: only the bytes tell
            fresh = await h.checkout()
            assert (h.pool.reused, len(h.fake.connections)) == (0, 2)
            assert fresh.peer is not conn.peer
            await h.fake.connections[0].wait_client_closed()
            hang_up(fresh)

    run(main())


def test_kept_backend_answering_set_config_wrongly_is_replaced_by_a_new_login() -> None:
    async def main() -> None:
        broken = [*APPLIED, *RESET, *SET_CONFIG, wrong(PARSED, BOUND, DONE, IDLE)]
        async with harness(broken, APPLIED) as h:
            assert await h.pool.give_back(await h.checkout())
            fresh = await h.checkout()
            assert (h.pool.reused, h.pool.idle_count, len(h.fake.connections)) == (0, 0, 2)
            await h.fake.connections[0].wait_client_closed()
            assert greeting_of(fresh)["application_name"] == "pgwarden:alice:r1"
            hang_up(fresh)

    run(main())


def test_clear_terminates_every_idle_backend() -> None:
    async def main() -> None:
        async with harness([*APPLIED, *RESET, *TERMINATED]) as h:
            for conn in [await h.checkout() for _ in range(3)]:
                assert await h.pool.give_back(conn)
            assert h.pool.idle_count == 3
            h.pool.clear()
            assert h.pool.idle_count == 0
            for seen in h.fake.connections:
                await seen.wait_client_closed()
                assert seen.kinds()[-1] == b"X"

    run(main())


# --- found by these tests: fail until proxy/upstream/pool.py is fixed -----------------------------


def test_refused_settings_are_never_applied() -> None:
    """connect_upstream filters a login's startup_parameters again (see
    test_startup_message_carries_the_policy_names_and_no_refused_setting); the pool's
    set_config must not be a way around that filter."""
    hostile: StartupParameters = (
        ("application_name", "pgwarden:alice:r1"), ("search_path", "evil"),
        ("role", "postgres"), ("session_authorization", "postgres"),
        ("default_transaction_read_only", "off"), ("datestyle", "ISO, MDY"),
    )  # fmt: skip

    async def main() -> list[tuple[str, str]]:
        async with harness(APPLIED) as h:
            hang_up(await h.checkout(hostile))
            return settings_sent(h.fake.connections[0].received)

    assert run(main()) == [
        ("application_name", "pgwarden:alice:r1"), ("search_path", "evil"),
        ("datestyle", "ISO, MDY"),
    ]  # fmt: skip


@pytest.mark.parametrize("kept", [False, True], ids=["new-login", "kept-backend"])
def test_cancelled_connect_closes_the_backend(kept: bool) -> None:
    """The session's login timeout cancels pool.connect; the backend it was preparing is
    nobody else's to close (connect_upstream aborts its own connection on cancellation)."""

    async def main() -> None:
        async with harness([*APPLIED, *RESET, *SET_CONFIG] if kept else [*LOGIN, *SET_CONFIG]) as h:
            if kept:
                assert await h.pool.give_back(await h.checkout())
            task = asyncio.create_task(h.checkout())
            seen = await h.fake.connection(0)
            async with asyncio.timeout(TIMEOUT):  # until the (second) set_config has arrived
                while [r.kind for r in seen.received].count(b"S") < 1 + kept:
                    await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert h.pool.idle_count == 0
            await seen.wait_client_closed(timeout=1.0)

    run(main())
