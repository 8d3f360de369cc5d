"""pgwarden's own upstream settings (the database notices a vanished pgwarden mid-query) and TCP
keepalive, against a scripted server: what the StartupMessage carries, what replaces a client's
value, how a server that refuses one (PostgreSQL < 14) is still logged in to, and what is
remembered. No PostgreSQL needed."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from proxy.policy.models import UpstreamTlsMode
from proxy.upstream.connect import UpstreamError, UpstreamLogin, connect_upstream
from proxy.upstream.liveness import (
    CHECK_SETTING,
    KEEPALIVE_COUNT,
    KEEPALIVE_IDLE,
    KEEPALIVE_INTERVAL,
    SESSION_SETTINGS,
    UnsupportedSettings,
    refused_setting,
)
from tests.fixtures.fake_upstream import (
    AUTH_OK,
    STARTUP,
    Expect,
    FakeUpstream,
    Script,
    Send,
    auth,
    fatal,
    login_ok,
)

TIMEOUT = 5.0  # every wait here is bounded; the fake answers at once
TEST_TIMEOUT = 20.0
LOOPS = pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])  # production runs uvloop
OLD_SERVER = 'unrecognized configuration parameter "client_connection_check_interval"'
SETTINGS = dict(SESSION_SETTINGS)
T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], loop_kind: str = "asyncio") -> T:
    factory = uvloop.new_event_loop if loop_kind == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(main, TEST_TIMEOUT))


def session_login(port: int, **kw: Any) -> UpstreamLogin:
    return UpstreamLogin(
        "127.0.0.1", port, "orders", "orders_ro", "pw", UpstreamTlsMode.DISABLE,
        target="orders", own_settings=SESSION_SETTINGS, **kw,
    )  # fmt: skip


def test_the_settings_are_the_documented_ones() -> None:
    assert SETTINGS == {
        "client_connection_check_interval": "1s", "tcp_keepalives_idle": "10",
        "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("sqlstate", "message", "found"),
    [
        ("42704", OLD_SERVER, CHECK_SETTING),
        ("22023", 'invalid value for parameter "client_connection_check_interval": "1000"',
         CHECK_SETTING),
        ("42704", 'paramètre de configuration « x » non reconnu "tcp_keepalives_idle"',
         "tcp_keepalives_idle"),
        ("28P01", OLD_SERVER, None),  # another refusal that happens to quote it
        ("42704", 'unrecognized configuration parameter "search_path_x"', None),
    ],
)  # fmt: skip
def test_which_refusal_is_about_one_of_our_settings(
    sqlstate: str, message: str, found: str | None
) -> None:
    assert refused_setting(sqlstate, message, SETTINGS) == found


def test_what_endpoints_refuse_is_remembered_within_a_bound() -> None:
    known = UnsupportedSettings(max_endpoints=2)
    known.add(("a", 1), CHECK_SETTING)
    known.add(("a", 1), "tcp_keepalives_idle")
    known.add(("b", 1), CHECK_SETTING)
    assert known.of(("a", 1)) == {CHECK_SETTING, "tcp_keepalives_idle"}
    known.add(("c", 1), CHECK_SETTING)  # ("a", 1) is the oldest: forgotten
    assert known.of(("a", 1)) == frozenset()
    assert known.of(("b", 1)) == known.of(("c", 1)) == {CHECK_SETTING}


@LOOPS
def test_a_session_login_carries_our_settings_in_place_of_the_clients(loop_kind: str) -> None:
    client = (("application_name", "app"), ("Client_Connection_Check_Interval", "0"),
              ("tcp_keepalives_idle", "7200"), ("search_path", "s"))  # fmt: skip

    async def main() -> dict[str, str]:
        async with FakeUpstream([Expect(STARTUP), Send(login_ok()), Expect(b"X")]) as fake:
            conn = await connect_upstream(
                session_login(fake.port, startup_parameters=client), connect_timeout=TIMEOUT
            )
            conn.peer.abort()
            return (await fake.connection()).received[0].parameters

    sent = run(main(), loop_kind)
    assert sent == {"user": "orders_ro", "database": "orders", "application_name": "app",
                    "search_path": "s", **SETTINGS}  # fmt: skip


@LOOPS
def test_upstream_sockets_have_tcp_keepalive(loop_kind: str) -> None:
    async def main() -> dict[str, int]:
        async with FakeUpstream([Expect(STARTUP), Send(login_ok()), Expect(b"X")]) as fake:
            conn = await connect_upstream(session_login(fake.port), connect_timeout=TIMEOUT)
            assert conn.peer.transport is not None
            sock = conn.peer.transport.get_extra_info("socket")
            options = {
                "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            }
            conn.peer.abort()
            return options

    assert run(main(), loop_kind) == {
        "keepalive": 1, "idle": KEEPALIVE_IDLE, "interval": KEEPALIVE_INTERVAL,
        "count": KEEPALIVE_COUNT,
    }  # fmt: skip


def test_a_server_that_refuses_the_check_is_logged_in_to_without_it_and_remembered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refuse: Script = [Expect(STARTUP), Send(auth(AUTH_OK) + fatal("42704", OLD_SERVER))]
    accept: Script = [Expect(STARTUP), Send(login_ok()), Expect(b"X")]
    known = UnsupportedSettings()

    async def main() -> tuple[list[dict[str, str]], int]:
        async with FakeUpstream(refuse, accept) as fake:
            for _ in range(2):  # the second login goes straight to the accepted form
                conn = await connect_upstream(
                    session_login(fake.port), connect_timeout=TIMEOUT, unsupported=known
                )
                conn.peer.abort()
            await fake.connection(2)
            return [c.received[0].parameters for c in fake.connections], fake.port

    with caplog.at_level(logging.WARNING, "proxy.upstream.liveness"):
        (first, second, third), port = run(main())
    assert first[CHECK_SETTING] == "1s"
    assert CHECK_SETTING not in second
    assert CHECK_SETTING not in third
    assert second["tcp_keepalives_idle"] == third["tcp_keepalives_idle"] == "10"
    assert known.of(("127.0.0.1", port)) == {CHECK_SETTING}
    assert "PostgreSQL before 14" in caplog.text
    assert caplog.text.count("refuses") == 1  # said once, not at every login


def test_every_refused_setting_is_dropped_in_turn_and_the_login_still_succeeds() -> None:
    def refusing(name: str) -> Script:
        message = f'unrecognized configuration parameter "{name}"'
        return [Expect(STARTUP), Send(auth(AUTH_OK) + fatal("42704", message))]

    scripts: list[Script] = [refusing(name) for name, _ in SESSION_SETTINGS]
    scripts.append([Expect(STARTUP), Send(login_ok()), Expect(b"X")])

    async def main() -> dict[str, str]:
        async with FakeUpstream(*scripts) as fake:
            conn = await connect_upstream(session_login(fake.port), connect_timeout=TIMEOUT)
            conn.peer.abort()
            return fake.connections[-1].received[0].parameters

    last = run(main())
    assert not set(SETTINGS) & set(last)
    assert last["user"] == "orders_ro"


def test_a_refusal_about_anything_else_is_the_clients_error_and_not_retried() -> None:
    unknown = fatal("42704", 'unrecognized configuration parameter "no_such_thing"')
    refuse: Script = [Expect(STARTUP), Send(auth(AUTH_OK) + unknown)]

    async def main() -> tuple[UpstreamError, int]:
        async with FakeUpstream(refuse) as fake:
            with pytest.raises(UpstreamError) as info:
                await connect_upstream(session_login(fake.port), connect_timeout=TIMEOUT)
            return info.value, len(fake.connections)

    error, connections = run(main())
    assert error.sqlstate == "42704"
    assert "no_such_thing" in error.message
    assert connections == 1


def test_a_client_value_of_our_settings_never_reaches_set_config_in_the_pool() -> None:
    login = session_login(5432, startup_parameters=((CHECK_SETTING, "0"), ("DateStyle", "ISO")))
    assert login.client_parameters == (("DateStyle", "ISO"),)
