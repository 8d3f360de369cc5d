"""Raw-socket attacks on pgwarden's cancel keys and connection slots: SECURITY.md rows 26 and 33.

Cancel requests arrive on fresh, unauthenticated connections carrying only a key: every key that is
not a live session's own must do nothing, get no reply and be closed, and pgwarden's keys must not
be the upstream's. Slowloris connections must each end at the login timeout counted from accept,
and real logins must keep working meanwhile. The pre-auth caps themselves, and how a connection
over one is refused, are tested in test_admission.py.
"""

from __future__ import annotations

import secrets
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.net.certs import generate_dev_certificates
from tests.fixtures.adversary import (
    CLOSE_TIMEOUT,
    QUERY_CANCELED,
    SSL_REQUEST,
    Credential,
    LoggedIn,
    UpstreamSpy,
    active_query_backends,
    assert_still_serving,
    cancel_key_is_live,
    cancel_packet,
    connect,
    expect_fatal,
    expect_silent_close,
    first_value,
    is_readable,
    login_raw,
    preauth_count,
    query_message,
    read_sasl_request,
    reply_prefix,
    sasl_initial,
    simple_query,
    startup_packet,
    unthrottled_config,
    wait_for,
    wait_for_quiet_database,
)
from tests.fixtures.pgwarden import RO_ROLE, PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.rawpg import RawPg, error_fields

pytestmark = pytest.mark.integration

SHORT_SLEEP = "SELECT pg_sleep(3)"
LONG_SLEEP = "SELECT pg_sleep(30)"


def log_in(pgwarden: RunningPgwarden, credential: Credential) -> LoggedIn:
    return login_raw(pgwarden.port, *credential)


def start_query(session: LoggedIn, postgres: PostgresServer, sql: str) -> None:
    """Send `sql` and wait until the database runs it (so a cancel now would hit it)."""
    session.conn.send_raw(query_message(sql))
    assert wait_for(lambda: len(active_query_backends(postgres, sql)) > 0), f"{sql} never ran"


def finishes_normally(session: LoggedIn) -> list[tuple[bytes, bytes]]:
    """The running query's answer up to ReadyForQuery, without an error."""
    session.conn.sock.settimeout(35.0)
    return session.conn.read_until_ready()


def read_answer(session: LoggedIn) -> list[tuple[bytes, bytes]]:
    """Every message up to ReadyForQuery, errors included (bounded count and time)."""
    session.conn.sock.settimeout(10.0)
    messages = []
    for _ in range(100):
        messages.append(session.conn.read_message())
        if messages[-1][0] == b"Z":
            return messages
    raise AssertionError(f"no ReadyForQuery in {messages!r}")


def send_cancel(pgwarden: RunningPgwarden, packet: bytes) -> None:
    """A CancelRequest gets no reply: pgwarden closes the connection without a byte."""
    with connect(pgwarden.port) as conn:
        conn.send_raw(packet)
        expect_silent_close(conn)


# --- row 26: cancel keys -----------------------------------------------------------------------


def ended_session_key(pgwarden: RunningPgwarden, credential: Credential) -> bytes:
    session = log_in(pgwarden, credential)
    key = (session.process_id, session.secret)
    session.close()
    assert wait_for(lambda: not cancel_key_is_live(pgwarden, *key))
    return cancel_packet(*key)


def flipped(secret: bytes) -> bytes:
    return bytes([secret[0] ^ 0xFF]) + secret[1:]


BAD_CANCELS = [
    "random_key",
    "live_pid_wrong_secret",
    "ended_session_key",
    "secret_of_3_bytes",
    "secret_of_257_bytes",
    "no_secret",
    "head_only",
]


@pytest.mark.parametrize("kind", BAD_CANCELS)
def test_cancel_request_without_a_live_sessions_key_does_nothing_and_gets_no_reply(
    pgwarden: RunningPgwarden,
    postgres: PostgresServer,
    spy: UpstreamSpy,
    credential: Credential,
    kind: str,
) -> None:
    ended = ended_session_key(pgwarden, credential) if kind == "ended_session_key" else b""
    victim = log_in(pgwarden, credential)
    try:
        packets = {
            "random_key": cancel_packet(secrets.randbelow(2**31), secrets.token_bytes(4)),
            "live_pid_wrong_secret": cancel_packet(victim.process_id, flipped(victim.secret)),
            "ended_session_key": ended,
            "secret_of_3_bytes": cancel_packet(victim.process_id, victim.secret[:3]),
            "secret_of_257_bytes": cancel_packet(victim.process_id, victim.secret * 64 + b"x"),
            "no_secret": cancel_packet(victim.process_id, b""),
            "head_only": struct.pack("!iI", 8, 80877102),
        }
        start_query(victim, postgres, SHORT_SLEEP)
        send_cancel(pgwarden, packets[kind])
        answer = finishes_normally(victim)  # an ErrorResponse (57014) would raise here
        assert (b"C", b"SELECT 1\0") in answer
    finally:
        victim.close()
    assert wait_for(lambda: preauth_count(pgwarden) == 0)
    assert_still_serving(pgwarden, *credential)


def test_valid_cancel_key_cancels_only_its_own_sessions_query(
    pgwarden: RunningPgwarden, postgres: PostgresServer, credential: Credential
) -> None:
    canceled, bystander = log_in(pgwarden, credential), log_in(pgwarden, credential)
    try:
        backend_pid = int(first_value(simple_query(canceled.conn, "SELECT pg_backend_pid()")))
        # The backend's real pid (pg_terminate_backend, NOTIFY agree); the secret is pgwarden's.
        assert canceled.process_id == backend_pid
        assert (canceled.process_id, canceled.secret) != (bystander.process_id, bystander.secret)
        start_query(bystander, postgres, SHORT_SLEEP)
        start_query(canceled, postgres, LONG_SLEEP)
        send_cancel(pgwarden, cancel_packet(canceled.process_id, canceled.secret))
        answer = read_answer(canceled)
        assert [type_ for type_, _ in answer] in ([b"T", b"E", b"Z"], [b"E", b"Z"]), answer
        fields = error_fields(answer[-2][1])
        assert (fields["S"], fields["C"]) == ("ERROR", QUERY_CANCELED), fields
        assert (b"C", b"SELECT 1\0") in finishes_normally(bystander)
        assert first_value(simple_query(canceled.conn, "SELECT 'still here'")) == "still here"
    finally:
        canceled.close()
        bystander.close()


def test_cancel_request_connections_do_not_stay_open(
    pgwarden: RunningPgwarden, credential: Credential
) -> None:
    # Many at once: each cancel connection is closed without a reply (over a pre-auth cap too: a
    # refused connection's CancelRequest is forwarded and gets no reply either; 53300 answers
    # only a StartupMessage).
    conns: list[RawPg] = []
    outcomes: list[str] = []
    try:
        for _ in range(25):
            conn = connect(pgwarden.port)
            conns.append(conn)
            conn.send_raw(cancel_packet(secrets.randbelow(2**31), secrets.token_bytes(4)))
        deadline = time.monotonic() + CLOSE_TIMEOUT
        for conn in conns:
            conn.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = conn.sock.recv(1, socket.MSG_PEEK)
            except TimeoutError:
                outcomes.append("open")
                continue
            outcomes.append("closed" if data == b"" else f"answered {data!r}")
        assert set(outcomes) == {"closed"}, outcomes
    finally:
        for conn in conns:
            conn.close()
    assert wait_for(lambda: preauth_count(pgwarden) == 0)
    assert_still_serving(pgwarden, *credential)


# --- row 33: slowloris and the pre-auth caps ---------------------------------------------------

DRIP_INTERVAL = 0.4
ATTACK_BOUND = 8.0  # all attackers must be gone well before this (login timeout: 1 s)


@pytest.fixture(scope="module")
def slow_pgwarden(
    deployment: PgwardenDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPgwarden]:
    directory: Path = tmp_path_factory.mktemp("pgwarden-slow")
    with running_pgwarden(
        unthrottled_config(deployment, directory, login_timeout="1s")
    ) as instance:
        yield instance


@pytest.fixture(scope="module")
def slow_credential(slow_pgwarden: RunningPgwarden) -> Credential:
    issued = slow_pgwarden.grant()
    return issued.username, issued.password


@dataclass
class Attacker:
    conn: RawPg
    drip: bytes  # sent one byte per tick; empty: sends nothing
    opened: float
    closed_after: float | None = None
    reset: bool = False  # a drip crossed pgwarden's close (the kernel answered with a reset)

    def tick(self) -> None:
        if not self.drip or is_readable(self.conn.sock, 0.0):
            return  # pgwarden has answered: read that first, drip nothing more
        try:
            self.conn.send_raw(self.drip[:1])
        except (BrokenPipeError, ConnectionResetError):
            self.reset = True
        self.drip = self.drip[1:]


def open_attackers(port: int) -> list[Attacker]:
    """Twelve slow clients: silent, a startup packet byte by byte, SSLRequest then silence, and a
    quick startup followed by a SASLInitialResponse byte by byte."""
    attackers = []
    for index in range(12):
        opened = time.monotonic()
        conn = connect(port)
        drip = b""
        if index % 4 == 1:
            drip = startup_packet({"user": "slowloris", "database": "orders"})
        elif index % 4 == 2:
            conn.send_raw(SSL_REQUEST)
            assert reply_prefix(conn) == b"N"
        elif index % 4 == 3:
            conn.send_raw(startup_packet({"user": "alice", "database": "orders"}))
            read_sasl_request(conn)
            drip = sasl_initial(b"n,,n=,r=" + b"x" * 24)
        attackers.append(Attacker(conn, drip, opened))
    return attackers


def reap(attackers: list[Attacker], wait: float) -> None:
    """Wait up to `wait` s for pgwarden to answer any open attacker; check each answer is
    FATAL 57014 then EOF, and note when it came."""
    by_socket = {a.conn.sock: a for a in attackers if a.closed_after is None}
    if not by_socket:
        return
    readable, _, _ = select.select(list(by_socket), [], [], wait)
    for sock in readable:
        attacker = by_socket[sock]
        try:
            expect_fatal(attacker.conn, QUERY_CANCELED)
        except AssertionError:
            if not attacker.reset:
                raise
            # Our byte crossed pgwarden's close; the reset may have eaten its FATAL. Closed anyway.
        attacker.closed_after = time.monotonic() - attacker.opened


def test_slowloris_connections_end_at_the_login_timeout_while_real_logins_work(
    slow_pgwarden: RunningPgwarden,
    postgres: PostgresServer,
    spy: UpstreamSpy,
    slow_credential: Credential,
) -> None:
    wait_for_quiet_database(postgres)
    attackers = open_attackers(slow_pgwarden.port)
    try:
        assert preauth_count(slow_pgwarden) >= 1
        real_login_done = False
        deadline = time.monotonic() + ATTACK_BOUND
        while time.monotonic() < deadline:
            pending = [a for a in attackers if a.closed_after is None]
            if not pending:
                break
            reap(pending, DRIP_INTERVAL)
            if not real_login_done:
                assert_still_serving(slow_pgwarden, *slow_credential)  # during the attack
                real_login_done = True
                reap(pending, 0.0)
            for attacker in pending:
                if attacker.closed_after is None:
                    attacker.tick()
        lifetimes = [a.closed_after for a in attackers]
        assert all(t is not None and t < CLOSE_TIMEOUT for t in lifetimes), lifetimes
    finally:
        for attacker in attackers:
            attacker.conn.close()
    assert wait_for(lambda: preauth_count(slow_pgwarden) == 0)
    assert spy.roles == [RO_ROLE]  # only the real login went upstream
    assert_still_serving(slow_pgwarden, *slow_credential)


@pytest.fixture(scope="module")
def slow_tls_pgwarden(
    deployment: PgwardenDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPgwarden]:
    certificates = generate_dev_certificates(tmp_path_factory.mktemp("slow-tls-certs"))
    directory: Path = tmp_path_factory.mktemp("pgwarden-slow-tls")
    tls = (certificates.server_cert, certificates.server_key)
    config = unthrottled_config(deployment, directory, login_timeout="1s", tls=tls)
    with running_pgwarden(config) as instance:
        yield instance


def test_client_stalling_in_the_tls_handshake_is_closed_at_the_login_timeout(
    slow_tls_pgwarden: RunningPgwarden,
) -> None:
    with connect(slow_tls_pgwarden.port) as conn:
        conn.send_raw(SSL_REQUEST)
        assert reply_prefix(conn) == b"S"
        conn.send_raw(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        # No ErrorResponse can be sent mid-handshake: the connection just closes.
        expect_silent_close(conn, timeout=CLOSE_TIMEOUT)
    assert wait_for(lambda: preauth_count(slow_tls_pgwarden) == 0)


def test_client_stalling_inside_tls_is_told_and_closed_at_the_login_timeout(
    slow_tls_pgwarden: RunningPgwarden,
) -> None:
    with connect(slow_tls_pgwarden.port) as conn:
        conn.send_raw(SSL_REQUEST)
        assert reply_prefix(conn) == b"S"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the certificate is not what this test is about
        with RawPg(context.wrap_socket(conn.sock, server_hostname="127.0.0.1")) as tls:
            expect_fatal(tls, QUERY_CANCELED, timeout=CLOSE_TIMEOUT)
    assert wait_for(lambda: preauth_count(slow_tls_pgwarden) == 0)
