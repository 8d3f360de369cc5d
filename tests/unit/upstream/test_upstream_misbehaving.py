"""The upstream login against a scripted, misbehaving server (SECURITY.md rows 9, 19, 22).

Each test runs `connect_upstream` (or cancel/terminate) against tests/fixtures/fake_upstream.py on
loopback, in its own event loop, and checks three things: the error the client would see (its
SQLSTATE and message), that pgwarden hung up on the fake (`client_closed`), and, where it matters,
what the fake received (no password in cleartext, no StartupMessage after a bad SSL answer, only
allow-listed parameters). No PostgreSQL needed. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from proxy.auth import ScramClient
from proxy.net.certs import DevCertificates, generate_dev_certificates
from proxy.policy.models import Upstream, UpstreamTlsMode
from proxy.upstream.connect import (
    REFUSED_STARTUP_SETTINGS,
    UpstreamConnection,
    UpstreamError,
    UpstreamLogin,
    allowed_startup_parameters,
    connect_upstream,
    refused_startup_setting,
    send_cancel_request,
    terminate_upstream,
)
from proxy.wire import BackendKeyData, NoticeResponse, ParameterStatus, TransactionStatus
from tests.fixtures.fake_upstream import (
    AUTH_CLEARTEXT,
    AUTH_GSS,
    AUTH_KERBEROS_V5,
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL_CONTINUE,
    AUTH_SSPI,
    CANCEL_REQUEST_CODE,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    STARTUP,
    Close,
    Expect,
    FakeConnection,
    FakeUpstream,
    ReadBytes,
    Reply,
    Script,
    Send,
    StartTls,
    auth,
    auth_sasl,
    backend_key,
    bogus_server_final,
    error_response,
    fatal,
    login_ok,
    message,
    notice,
    parameter_status,
    ready,
    scram_until_final,
    server_context,
    server_first,
)

TEST_TIMEOUT = 20.0  # the whole test body, whatever happens
LOGIN_TIMEOUT = 5.0  # a bound: every failure here is immediate except the stall
STALL_TIMEOUT = 0.2
ROLE, PASSWORD, DATABASE, TARGET = "orders_ro", "s3cret-pw", "orders", "orders-db"
COULD_NOT = f'pgwarden: could not log in to the database for "{TARGET}": '
# Production runs on uvloop (proxy/runtime/serve.py), whose transports are not asyncio.Transport
# subclasses; the stdlib loop is the fallback. Both must work.
LOOPS = pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])


def run(main: Coroutine[Any, Any, Any], loop_kind: str = "asyncio") -> Any:
    """Run `main` in a fresh event loop (the stdlib's or uvloop), bounded by TEST_TIMEOUT."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop_kind == "uvloop":
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(asyncio.wait_for(main, TEST_TIMEOUT))


def login(port: int, tls: UpstreamTlsMode = UpstreamTlsMode.DISABLE, **kw: Any) -> UpstreamLogin:
    return UpstreamLogin("127.0.0.1", port, DATABASE, ROLE, PASSWORD, tls, target=TARGET, **kw)


class Heartbeat:
    """A trivial task beside the login: it keeps ticking only if the event loop stays free. It
    ticks every `interval` seconds; at 0, on every turn of the loop."""

    def __init__(self, interval: float = 0.01) -> None:
        self.ticks = 0
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.ticks += 1

    def __enter__(self) -> Heartbeat:
        self._task = asyncio.get_running_loop().create_task(self._beat())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def login_fails(
    script: Script,
    *,
    tls: UpstreamTlsMode = UpstreamTlsMode.DISABLE,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = LOGIN_TIMEOUT,
    closes_itself: bool = False,
    **kw: Any,
) -> tuple[UpstreamError, FakeConnection]:
    """Log in against `script`; the UpstreamError and what the fake saw, once pgwarden hung up."""
    async with FakeUpstream(script) as fake:
        with Heartbeat(interval=0) as heartbeat:
            with pytest.raises(UpstreamError) as info:
                await connect_upstream(
                    login(fake.port, tls, **kw), ssl_context=ssl_context, connect_timeout=timeout
                )
            assert heartbeat.ticks > 0  # the loop went on running other tasks during the login
        conn = await fake.connection()
        if not closes_itself:
            await conn.wait_client_closed()
    return info.value, conn


async def login_succeeds(script: Script, **kw: Any) -> tuple[UpstreamConnection, FakeConnection]:
    """Log in against `script`, then Terminate; the connection and what the fake saw."""
    tls = kw.pop("tls", UpstreamTlsMode.DISABLE)
    ssl_context = kw.pop("ssl_context", None)
    async with FakeUpstream([*script, Expect(b"X")]) as fake:
        conn = await connect_upstream(
            login(fake.port, tls, **kw), ssl_context=ssl_context, connect_timeout=LOGIN_TIMEOUT
        )
        await terminate_upstream(conn)
        seen = await fake.connection()
        await seen.wait_client_closed()
    assert conn.peer.is_closed
    return conn, seen


def expect_failure(
    error: UpstreamError, fragment: str, sqlstate: str = "08001", prefix: str = COULD_NOT
) -> None:
    assert error.sqlstate == sqlstate
    assert error.severity == "FATAL"
    assert error.message.startswith(prefix)
    assert fragment in error.message
    assert PASSWORD not in str(error)


# --- SECURITY.md row 19: the upstream as an untrusted peer ---------------------------------------

START_SCRAM = [Expect(STARTUP), Send(auth_sasl()), Expect(b"p")]
SALT_B64 = "MDEyMzQ1Njc4OWFiY2RlZg=="

MISBEHAVIOUR = [
    pytest.param(
        [*START_SCRAM, Reply(server_first(iterations=10**9))],
        "SCRAM iteration count 1000000000 is above the limit of 100000",
        id="huge-iteration-count",
    ),
    pytest.param(
        [*START_SCRAM, Reply(server_first(nonce_suffix="n" * 300))],
        "nonce longer than 256 characters",
        id="oversized-nonce",
    ),
    pytest.param(
        [*START_SCRAM, Reply(server_first(nonce_suffix="n" * 70_000))],
        "exceeds the limit of 65535 bytes",
        id="oversized-scram-message",
    ),
    pytest.param(
        [*START_SCRAM, Send(auth(AUTH_SASL_CONTINUE, f"r=x,s={SALT_B64},i=4096".encode()))],
        "nonce does not extend ours",
        id="foreign-nonce",
    ),
    pytest.param(
        [*scram_until_final(), Send(bogus_server_final())],
        "server signature is wrong",
        id="bad-server-signature",
    ),
    pytest.param(
        [*scram_until_final(), Send(login_ok())],
        "AuthenticationOk where AuthenticationSASLFinal was expected",
        id="scram-without-server-proof",
    ),
    pytest.param(
        [*START_SCRAM, Send(login_ok())],
        "AuthenticationOk where AuthenticationSASLContinue was expected",
        id="ok-right-after-client-first",
    ),
    pytest.param(
        [Expect(STARTUP), Send(auth_sasl("SCRAM-SHA-1", "PLAIN"))],
        "no supported SASL mechanism",
        id="no-scram-sha-256",
    ),
    pytest.param(
        [Expect(STARTUP), Send(message(b"E", b"\0"))],
        "invalid error response",
        id="error-response-without-fields",
    ),
    pytest.param(
        [Expect(STARTUP), Send(error_response(("C", "oops!"), ("M", "no")))],
        "invalid error response",
        id="error-response-bad-sqlstate",
    ),
    pytest.param(
        [Expect(STARTUP), Send(b"R" + struct.pack("!I", 0x7FFFFFFF))],
        "invalid message length",
        id="length-0x7fffffff",
    ),
    pytest.param(
        [Expect(STARTUP), Send(b"R" + struct.pack("!I", 0xFFFFFFFF))],
        "invalid message length",
        id="length-0xffffffff",
    ),
    pytest.param(
        [Expect(STARTUP), Send(b"R" + struct.pack("!I", 2))],
        "invalid message length",
        id="length-below-4",
    ),
    pytest.param(
        [Expect(STARTUP), Send(message(b"D", b"\0\0"))],
        "unexpected message (type 'D') during authentication",
        id="data-row-during-auth",
    ),
    pytest.param(
        [Expect(STARTUP), Send(message(b"v", struct.pack("!HHI", 3, 0, 0)))],
        "unexpected message (type 'v') during authentication",
        id="negotiate-protocol-version",
    ),
    pytest.param(
        [Expect(STARTUP), Send(auth(99))],
        "unsupported authentication method (99)",
        id="unknown-auth-code",
    ),
    pytest.param([Expect(STARTUP), Send(auth(AUTH_GSS))], "GSSAPI", id="gss"),
    pytest.param([Expect(STARTUP), Send(auth(AUTH_SSPI))], "SSPI", id="sspi"),
    pytest.param([Expect(STARTUP), Send(auth(AUTH_KERBEROS_V5))], "Kerberos V5", id="kerberos"),
    pytest.param(
        [Expect(STARTUP), Send(auth(AUTH_SASL_CONTINUE, b"r=x"))],
        "AuthenticationSASLContinue out of sequence",
        id="sasl-continue-first",
    ),
    pytest.param(
        [Expect(STARTUP), Send(auth(AUTH_OK) + parameter_status("a", "b") + ready())],
        "no BackendKeyData before ReadyForQuery",
        id="no-backend-key",
    ),
    pytest.param(
        [Expect(STARTUP), Send(auth(AUTH_OK) + backend_key(secret=bytes(8)) + ready())],
        "8-byte cancel key; protocol 3.0 keys are 4 bytes",
        id="long-cancel-key",
    ),
    pytest.param(
        [Expect(STARTUP), Send(auth(AUTH_OK) + backend_key() + backend_key() + ready())],
        "BackendKeyData twice",
        id="two-backend-keys",
    ),
    pytest.param(
        [Expect(STARTUP), Send(auth(AUTH_OK) + message(b"C", b"SELECT 1\0"))],
        "unexpected message (type 'C') after authentication",
        id="command-complete-in-greeting",
    ),
    pytest.param(
        [Expect(STARTUP), Send(auth(AUTH_OK) + backend_key() + ready(b"X"))],
        "invalid ReadyForQuery message",
        id="bad-ready-status",
    ),
    pytest.param(
        [Expect(STARTUP), Send(auth(AUTH_OK) + parameter_status("x", "y" * 60_000) * 20)],
        "too much data after authentication",
        id="greeting-flood",
    ),
]


@pytest.mark.parametrize(("script", "fragment"), MISBEHAVIOUR)
def test_misbehaving_upstream_aborts_the_login_with_08001(script: Script, fragment: str) -> None:
    error, _ = run(login_fails(script))
    expect_failure(error, fragment)
    assert not error.refused


CLEARTEXT_REFUSED = "cleartext, which pgwarden sends only over TLS with a verified certificate"


def test_cleartext_password_is_refused_without_tls_and_never_sent() -> None:
    error, seen = run(login_fails([Expect(STARTUP), Send(auth(AUTH_CLEARTEXT))]))
    expect_failure(error, CLEARTEXT_REFUSED)
    assert seen.kinds() == [STARTUP]  # the StartupMessage only: no PasswordMessage


@pytest.mark.parametrize(
    "script",
    [[Close()], [Expect(STARTUP), Close()], [Expect(STARTUP), Send(auth(AUTH_OK)), Close()]],
    ids=["at-once", "after-startup", "after-authentication-ok"],
)
def test_upstream_closing_during_login_is_08006(script: Script) -> None:
    error, _ = run(login_fails(script, closes_itself=True))
    expect_failure(error, "the server closed the connection during login", "08006")


def test_stalled_upstream_times_out_within_the_bound_and_the_loop_stays_free() -> None:
    async def main() -> tuple[UpstreamError, int]:
        with Heartbeat() as heartbeat:
            error, _ = await login_fails([Expect(STARTUP)], timeout=STALL_TIMEOUT)
        return error, heartbeat.ticks

    error, ticks = run(main())
    expect_failure(error, f"did not complete the login within {STALL_TIMEOUT} s")
    assert ticks >= 5  # the loop ran other work throughout the wait


def test_pbkdf2_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[threading.Thread] = []
    original = ScramClient.compute_salted_password

    def spy(self: ScramClient) -> bytes:
        threads.append(threading.current_thread())
        return original(self)

    monkeypatch.setattr(ScramClient, "compute_salted_password", spy)
    error, _ = run(login_fails([*scram_until_final(), Send(bogus_server_final())]))
    expect_failure(error, "server signature is wrong")
    assert len(threads) == 1
    assert threads[0] is not threading.main_thread()


# --- refusals: the upstream's SQLSTATE and message reach the client ------------------------------

REFUSED = f'pgwarden: the database refused the login for role "{ROLE}": '


def test_upstream_refusal_carries_its_sqlstate_and_message() -> None:
    text = f'password authentication failed for user "{ROLE}"'
    error, _ = run(login_fails([Expect(STARTUP), Send(fatal("28P01", text))]))
    assert error.message == REFUSED + text
    assert (error.sqlstate, error.severity, error.refused) == ("28P01", "FATAL", True)


def test_refusal_after_authentication_is_relayed_too() -> None:
    text = 'database "orders" does not exist'
    error, _ = run(login_fails([Expect(STARTUP), Send(login_ok()[:9] + fatal("3D000", text))]))
    assert error.message == REFUSED + text
    assert error.sqlstate == "3D000"


def test_upstream_message_is_stripped_of_control_characters() -> None:
    script: Script = [Expect(STARTUP), Send(fatal("53300", "too many\nclients \x1b[31m\u202egone"))]
    error, _ = run(login_fails(script))
    assert error.message == REFUSED + "too many?clients ?[31m?gone"


# --- what a successful login returns and sends ---------------------------------------------------


@LOOPS
def test_greeting_is_returned_in_order_with_the_key_apart_and_trailing_bytes(
    loop_kind: str,
) -> None:
    greeting = (
        parameter_status("server_version", "16.4")
        + notice("hello")
        + parameter_status("TimeZone", "UTC")
    )
    after = auth(AUTH_OK) + greeting + backend_key(77, b"abcd") + ready(b"I") + b"N\0\0"
    conn, seen = run(login_succeeds([Expect(STARTUP), Send(after)]), loop_kind)
    assert [type(m) for m in conn.messages] == [ParameterStatus, NoticeResponse, ParameterStatus]
    assert b"".join(conn.greeting) == greeting  # as sent, BackendKeyData left out
    assert conn.backend_key == BackendKeyData(77, b"abcd")
    assert conn.ready_status is TransactionStatus.IDLE
    assert conn.server_version == "16.4"
    assert conn.parameters == {"server_version": "16.4", "TimeZone": "UTC"}
    assert conn.pending == b"N\0\0"  # for the relay, not parsed here
    assert not conn.encrypted
    assert seen.kinds() == [STARTUP, b"X"]  # StartupMessage, then Terminate on the way out
    assert seen.received[0].code == PROTOCOL_3_0


def test_startup_message_carries_the_policy_names_and_no_refused_setting() -> None:
    client_params = (
        ("application_name", "psql"), ("search_path", "evil"), ("options", "-c role=postgres"),
        ("datestyle", "ISO, MDY"), ("replication", "database"), ("user", "postgres"),
        ("session_authorization", "postgres"), ("default_transaction_read_only", "off"),
    )  # fmt: skip
    script: Script = [Expect(STARTUP), Send(login_ok())]
    _, seen = run(login_succeeds(script, startup_parameters=client_params))
    assert seen.received[0].parameters == {
        "user": ROLE, "database": DATABASE, "application_name": "psql", "search_path": "evil",
        "datestyle": "ISO, MDY",
    }  # fmt: skip


def test_md5_response_is_computed_as_postgres_expects() -> None:
    salt = b"\x9a\x01\xff\x10"
    script: Script = [Expect(STARTUP), Send(auth(AUTH_MD5, salt)), Expect(b"p"), Send(login_ok())]
    _, seen = run(login_succeeds(script))
    inner = hashlib.md5((PASSWORD + ROLE).encode()).hexdigest()
    expected = "md5" + hashlib.md5(inner.encode() + salt).hexdigest()
    assert seen.received[1].payload == expected.encode() + b"\0"


def test_trust_login_sends_no_password() -> None:
    _, seen = run(login_succeeds([Expect(STARTUP), Send(login_ok())]))
    assert seen.kinds() == [STARTUP, b"X"]


def test_cancelling_the_login_aborts_the_connection() -> None:
    async def main() -> None:
        async with FakeUpstream([Expect(STARTUP)]) as fake:
            task = asyncio.create_task(connect_upstream(login(fake.port)))
            seen = await fake.connection()
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await seen.wait_client_closed()

    run(main())


def test_connection_refused_is_08001() -> None:
    error = run(_refused_login())
    expect_failure(error, "could not connect to the server")


async def _refused_login() -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await connect_upstream(login(closed_port()), connect_timeout=LOGIN_TIMEOUT)
    return info.value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- SECURITY.md row 9 and TLS negotiation -------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return generate_dev_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def server_tls(certs: DevCertificates) -> ssl.SSLContext:
    return server_context(str(certs.server_cert), str(certs.server_key))


def encrypting_context() -> ssl.SSLContext:
    """prefer/require: encryption without checking the certificate (the TLS module's job later)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def verifying_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


@LOOPS
@pytest.mark.parametrize(
    "answer",
    [b"S" + fatal("28000", "injected"), b"N" + auth(AUTH_OK)],
    ids=["S-then-error", "N-then-auth-ok"],
)
def test_plaintext_bytes_after_the_ssl_answer_abort_the_connection(
    answer: bytes, loop_kind: str
) -> None:
    script: Script = [Expect(STARTUP), Send(answer)]
    for mode in (UpstreamTlsMode.PREFER, UpstreamTlsMode.REQUIRE):
        coro = login_fails(script, tls=mode, ssl_context=encrypting_context())
        error, seen = run(coro, loop_kind)
        expect_failure(error, "unencrypted data after its answer to the SSL request")
        assert seen.kinds() == [STARTUP]  # the SSLRequest; no StartupMessage followed
        assert seen.received[0].code == SSL_REQUEST_CODE


@pytest.mark.parametrize("mode", [UpstreamTlsMode.REQUIRE, UpstreamTlsMode.VERIFY_FULL])
def test_ssl_refused_under_require_aborts_before_any_startup(mode: UpstreamTlsMode) -> None:
    coro = login_fails([Expect(STARTUP), Send(b"N")], tls=mode, ssl_context=encrypting_context())
    error, seen = run(coro)
    expect_failure(error, f"does not support TLS, but the policy requires it (tls: {mode})")
    assert seen.kinds() == [STARTUP]


def test_ssl_refused_under_prefer_continues_in_plaintext() -> None:
    script: Script = [Expect(STARTUP), Send(b"N"), Expect(STARTUP), Send(login_ok())]
    coro = login_succeeds(script, tls=UpstreamTlsMode.PREFER, ssl_context=encrypting_context())
    conn, seen = run(coro)
    assert not conn.encrypted
    assert [item.code for item in seen.received[:2]] == [SSL_REQUEST_CODE, PROTOCOL_3_0]


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (b"E", "an error response as its answer to the SSL request"),
        (fatal("08P01", "unsupported frontend protocol"), "an error response as its answer"),
        (b"X", "invalid answer to the SSL request"),
    ],
    ids=["E", "error-response", "X"],
)
def test_invalid_ssl_answer_aborts(answer: bytes, fragment: str) -> None:
    coro = login_fails(
        [Expect(STARTUP), Send(answer)],
        tls=UpstreamTlsMode.PREFER,
        ssl_context=encrypting_context(),
    )
    error, _ = run(coro)
    expect_failure(error, fragment)


def test_disable_sends_no_ssl_request() -> None:
    _, seen = run(login_succeeds([Expect(STARTUP), Send(login_ok())]))
    assert seen.received[0].code == PROTOCOL_3_0


def test_tls_mode_without_a_context_fails_before_connecting() -> None:
    async def main() -> UpstreamError:
        async with FakeUpstream([Expect(STARTUP)]) as fake:
            with pytest.raises(UpstreamError) as info:
                await connect_upstream(login(fake.port, UpstreamTlsMode.REQUIRE))
            assert fake.connections == []
        return info.value

    expect_failure(run(main()), "no TLS context is configured for the policy's tls: require")


def test_cleartext_password_is_refused_over_unverified_tls(server_tls: ssl.SSLContext) -> None:
    script: Script = [
        Expect(STARTUP), Send(b"S"), StartTls(server_tls), Expect(STARTUP),
        Send(auth(AUTH_CLEARTEXT)),
    ]  # fmt: skip
    coro = login_fails(script, tls=UpstreamTlsMode.REQUIRE, ssl_context=encrypting_context())
    error, seen = run(coro)
    expect_failure(error, CLEARTEXT_REFUSED)
    assert seen.kinds() == [STARTUP, STARTUP]  # SSLRequest, StartupMessage: no PasswordMessage


@LOOPS
def test_cleartext_password_goes_only_over_verified_tls(
    server_tls: ssl.SSLContext, certs: DevCertificates, loop_kind: str
) -> None:
    script: Script = [
        Expect(STARTUP), Send(b"S"), StartTls(server_tls), Expect(STARTUP),
        Send(auth(AUTH_CLEARTEXT)), Expect(b"p"), Send(login_ok()),
    ]  # fmt: skip
    context = verifying_context(certs.ca_cert)
    coro = login_succeeds(script, tls=UpstreamTlsMode.VERIFY_FULL, ssl_context=context)
    conn, seen = run(coro, loop_kind)
    assert conn.encrypted
    assert seen.received[2].payload == PASSWORD.encode() + b"\0"


def test_verify_full_accepts_the_right_certificate(
    server_tls: ssl.SSLContext, certs: DevCertificates
) -> None:
    script: Script = [
        Expect(STARTUP),
        Send(b"S"),
        StartTls(server_tls),
        Expect(STARTUP),
        Send(login_ok()),
    ]
    context = verifying_context(certs.ca_cert)
    conn, _ = run(login_succeeds(script, tls=UpstreamTlsMode.VERIFY_FULL, ssl_context=context))
    assert conn.encrypted


@pytest.mark.parametrize("hostname", ["db.example.com", None], ids=["wrong-name", "wrong-ca"])
def test_verify_full_refuses_a_certificate_that_does_not_check_out(
    server_tls: ssl.SSLContext, certs: DevCertificates, hostname: str | None
) -> None:
    script: Script = [Expect(STARTUP), Send(b"S"), StartTls(server_tls)]
    # wrong-ca: the system store does not know our dev CA
    context = verifying_context(certs.ca_cert) if hostname else ssl.create_default_context()
    coro = login_fails(
        script, tls=UpstreamTlsMode.VERIFY_FULL, ssl_context=context, server_hostname=hostname
    )
    error, seen = run(coro)
    expect_failure(error, "the server's TLS certificate could not be verified")
    assert seen.kinds() == [STARTUP]


def test_garbage_instead_of_a_tls_handshake_fails_cleanly() -> None:
    # ReadBytes: wait for the ClientHello's record header, so the garbage cannot ride with `S`.
    script: Script = [Expect(STARTUP), Send(b"S"), ReadBytes(5), Send(b"this is not TLS" * 10)]
    coro = login_fails(script, tls=UpstreamTlsMode.REQUIRE, ssl_context=encrypting_context())
    error, _ = run(coro)
    expect_failure(error, "the TLS handshake with the server failed")


def test_scram_over_tls_binds_to_the_server_certificate(server_tls: ssl.SSLContext) -> None:
    script: Script = [
        Expect(STARTUP), Send(b"S"), StartTls(server_tls), Expect(STARTUP),
        Send(auth_sasl("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")), Expect(b"p"),
        Send(fatal("28P01", "password authentication failed")),
    ]  # fmt: skip
    coro = login_fails(script, tls=UpstreamTlsMode.REQUIRE, ssl_context=encrypting_context())
    error, seen = run(coro)
    assert error.sqlstate == "28P01"
    mechanism, _, rest = seen.received[2].payload.partition(b"\0")
    assert mechanism == b"SCRAM-SHA-256-PLUS"
    assert rest[4:].startswith(b"p=tls-server-end-point,,")


# --- cancel requests -----------------------------------------------------------------------------

KEY = BackendKeyData(31337, b"\xde\xad\xbe\xef")


def cancel(port: int, **kw: Any) -> Coroutine[Any, Any, bool]:
    kw.setdefault("tls_mode", UpstreamTlsMode.DISABLE)
    kw.setdefault("timeout", LOGIN_TIMEOUT)
    return send_cancel_request("127.0.0.1", port, KEY, **kw)


def test_cancel_request_is_sent_and_succeeds_when_the_server_closes() -> None:
    async def main() -> tuple[bool, FakeConnection]:
        async with FakeUpstream([Expect(STARTUP), Close()]) as fake:
            return await cancel(fake.port), await fake.connection()

    sent, seen = run(main())
    assert sent
    assert (
        seen.received[0].payload == struct.pack("!Ii", CANCEL_REQUEST_CODE, 31337) + KEY.secret_key
    )


def test_cancel_request_over_tls(server_tls: ssl.SSLContext) -> None:
    async def main() -> tuple[bool, FakeConnection]:
        script: Script = [
            Expect(STARTUP),
            Send(b"S"),
            StartTls(server_tls),
            Expect(STARTUP),
            Close(),
        ]
        async with FakeUpstream(script) as fake:
            ok = await cancel(
                fake.port, tls_mode=UpstreamTlsMode.REQUIRE, ssl_context=encrypting_context()
            )
            return ok, await fake.connection()

    sent, seen = run(main())
    assert sent
    assert [item.code for item in seen.received] == [SSL_REQUEST_CODE, CANCEL_REQUEST_CODE]


@pytest.mark.parametrize(
    ("script", "tls_mode"),
    [
        ([Expect(STARTUP)], UpstreamTlsMode.DISABLE),
        ([Expect(STARTUP), Send(b"S" + b"junk")], UpstreamTlsMode.REQUIRE),
        ([Expect(STARTUP), Send(b"N")], UpstreamTlsMode.REQUIRE),
    ],
    ids=["server-never-closes", "ssl-answer-with-junk", "ssl-refused-under-require"],
)
def test_failed_cancel_request_returns_false_without_raising(
    script: Script, tls_mode: UpstreamTlsMode
) -> None:
    async def main() -> tuple[bool, FakeConnection]:
        async with FakeUpstream(script) as fake:
            ok = await cancel(
                fake.port,
                tls_mode=tls_mode,
                ssl_context=encrypting_context(),
                timeout=STALL_TIMEOUT,
            )
            seen = await fake.connection()
            await seen.wait_client_closed()
            return ok, seen

    sent, _ = run(main())
    assert not sent


def test_cancel_to_a_closed_port_returns_false() -> None:
    assert not run(cancel(closed_port()))


# --- the refused startup settings (row 22) -------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "forwarded"),
    [
        ((("application_name", "app"), ("client_encoding", "UTF8")),
         (("application_name", "app"), ("client_encoding", "UTF8"))),
        ((("statement_timeout", "3s"), ("search_path", "app, public"), ("myapp.tenant", "7")),
         (("statement_timeout", "3s"), ("search_path", "app, public"), ("myapp.tenant", "7"))),
        ((("ROLE", "postgres"), ("session_authorization", "postgres"), ("replication", "true"),
          ("Default_Transaction_Read_Only", "off"), ("user", "postgres"), ("database", "x"),
          ("post_auth_delay", "100"), ("ignore_system_indexes", "on")),
         ()),
        ((("application_name", "first"), ("APPLICATION_NAME", "second")),
         (("application_name", "first"),)),
        ((("application_name", "nul\0inside"), ("", "empty name"), ("options", "-c role=x"),
          ("_pq_.anything", "1")), ()),
    ],
    ids=["plain", "any-runtime-setting", "refused", "first-wins", "odd"],
)  # fmt: skip
def test_allowed_startup_parameters(
    given: tuple[tuple[str, str], ...], forwarded: tuple[tuple[str, str], ...]
) -> None:
    assert allowed_startup_parameters(given) == forwarded


@pytest.mark.parametrize(
    "name",
    ["user", "database", "role", "session_authorization", "replication",
     "default_transaction_read_only", "post_auth_delay"],
)  # fmt: skip
def test_identity_privilege_and_connection_start_settings_are_refused(name: str) -> None:
    refused = refused_startup_setting([("search_path", "x"), (name.upper(), "y")])
    assert refused is not None
    assert refused[0] == name.upper()
    assert REFUSED_STARTUP_SETTINGS[name] == refused[1]


def test_a_dotless_capital_i_is_not_folded_into_a_refused_name() -> None:
    # Postgres folds ASCII letters only: "ROLE" is role, but "ROL\u0130" is another name.
    assert refused_startup_setting([("ROL\u0130", "x")]) is None


# --- UpstreamLogin -------------------------------------------------------------------------------


def test_login_keeps_the_password_out_of_repr() -> None:
    assert PASSWORD not in repr(login(5432))


@pytest.mark.parametrize(
    "changes",
    [{"role": "r" * 64}, {"role": "bad\nrole"}, {"database": ""}, {"port": 0}],
    ids=["64-byte-role", "control-character", "empty-database", "port-0"],
)
def test_login_refuses_names_postgres_would_reinterpret(changes: dict[str, Any]) -> None:
    values: dict[str, Any] = {"host": "db", "port": 5432, "database": DATABASE, "role": ROLE}
    with pytest.raises(ValueError, match="invalid upstream"):
        UpstreamLogin(**{**values, **changes}, password=PASSWORD, tls_mode=UpstreamTlsMode.DISABLE)


def test_login_for_a_policy_upstream_filters_parameters() -> None:
    upstream = Upstream("db.internal", 5433, "orders", UpstreamTlsMode.VERIFY_FULL)
    made = UpstreamLogin.for_upstream(
        upstream, role=ROLE, password=PASSWORD, target=TARGET,
        startup_parameters=[("role", "postgres"), ("application_name", "a")],
    )  # fmt: skip
    assert (made.host, made.port, made.database, made.tls_mode) == (
        "db.internal", 5433, "orders", UpstreamTlsMode.VERIFY_FULL,
    )  # fmt: skip
    assert made.server_hostname == "db.internal"
    assert made.startup_parameters == (("application_name", "a"),)
