"""Clients that leave before starting up: closed in silence, no error logged (SECURITY.md rows 1,
8 and 36).

Postgres answers none of these: a Terminate ('X') or EOF where a startup packet belongs, an
SSLRequest followed by a hang-up, a TLS handshake that fails. Answering the Terminate with
`08P01 invalid length of startup packet: 1476395008` (its bytes read as a length) crashes
node-postgres, which sends it when it abandons a connection; logging a TLS hang-up as an ERROR
with a traceback turns every port scanner and impatient client into an alert. Each case here must
send no byte, log nothing above DEBUG, release its pre-auth slot, and leave pgwarden serving.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable

import pytest

from tests.fixtures.adversary import (
    CLOSE_TIMEOUT,
    GSSENC_REQUEST,
    SSL_REQUEST,
    Credential,
    UpstreamSpy,
    assert_clean_rejection,
    connect,
    expect_closed,
    reply_prefix,
    startup_packet,
    wait_for_quiet_database,
)
from tests.fixtures.pgwarden import RunningPgwarden
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.integration

TERMINATE = b"X" + struct.pack("!I", 4)
TLS_ALERT = 0x15  # the content type of a TLS alert record
MAX_ANSWER = 4096


@pytest.fixture
def quiet_log(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """Records of pgwarden's own loggers above DEBUG, as text, at the time of the call."""
    caplog.set_level(logging.DEBUG, logger="proxy")
    caplog.set_level(logging.DEBUG, logger="asyncio")

    def loud() -> list[str]:
        return [
            f"{r.levelname} {r.name}: {r.getMessage()}"
            for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith(("proxy", "asyncio"))
        ]

    return loud


def read_to_eof(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (bounded in time and size)."""
    sock.settimeout(CLOSE_TIMEOUT)
    received = b""
    while len(received) < MAX_ANSWER:
        try:
            chunk = sock.recv(MAX_ANSWER)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


def half_close(sock: socket.socket) -> None:
    """Send EOF but keep reading: whatever pgwarden answers still arrives."""
    sock.shutdown(socket.SHUT_WR)


# --- without a certificate ---------------------------------------------------------------------

EARLY_EXITS = {
    "terminate": TERMINATE,
    "terminate_split": TERMINATE[:4],  # then EOF before its last byte: still silence
    "eof": b"",
    "eof_mid_packet": startup_packet({"user": "alice"})[:9],
    "ssl_request_then_eof": SSL_REQUEST,
    "gssenc_request_then_eof": GSSENC_REQUEST,
}


@pytest.mark.parametrize("sent", EARLY_EXITS.values(), ids=EARLY_EXITS.keys())
def test_a_client_leaving_before_startup_is_closed_without_a_byte_or_an_error(
    pgwarden: RunningPgwarden,
    clean: Callable[[], None],
    quiet_log: Callable[[], list[str]],
    sent: bytes,
) -> None:
    with connect(pgwarden.port) as conn:
        conn.send_raw(sent)
        if sent in (SSL_REQUEST, GSSENC_REQUEST):
            assert reply_prefix(conn) == b"N"
        half_close(conn.sock)
        expect_closed(conn.sock)
    clean()
    assert quiet_log() == []


def test_a_terminate_before_startup_is_answered_with_nothing_even_if_the_client_stays(
    pgwarden: RunningPgwarden, clean: Callable[[], None], quiet_log: Callable[[], list[str]]
) -> None:
    with connect(pgwarden.port) as conn:
        conn.send_raw(TERMINATE)
        expect_closed(conn.sock)  # pgwarden closes first: no 08P01, no byte
    clean()
    assert quiet_log() == []


# --- with a certificate ------------------------------------------------------------------------


@pytest.fixture
def tls_clean(
    tls_pgwarden: RunningPgwarden, spy: UpstreamSpy, postgres: PostgresServer
) -> Callable[[], None]:
    wait_for_quiet_database(postgres)
    issued = tls_pgwarden.grant()
    credential: Credential = (issued.username, issued.password)
    return lambda: assert_clean_rejection(tls_pgwarden, spy, postgres, credential)


TLS_FAILURES = {
    "hang_up_after_s": b"",
    # A client that sends its startup packet in clear after our 'S' (WRONG_VERSION_NUMBER).
    "plaintext_after_s": startup_packet({"user": "alice", "database": "orders"}),
    "http_after_s": b"GET / HTTP/1.1\r\nHost: pgwarden\r\n\r\n",
    "garbage_record": b"\x16\x03\x01\x00\x02\x01\x00",  # a ClientHello two bytes long
}


@pytest.mark.parametrize("sent", TLS_FAILURES.values(), ids=TLS_FAILURES.keys())
def test_a_failed_or_abandoned_tls_handshake_is_closed_quietly(
    tls_pgwarden: RunningPgwarden,
    tls_clean: Callable[[], None],
    quiet_log: Callable[[], list[str]],
    sent: bytes,
) -> None:
    with connect(tls_pgwarden.port) as conn:
        conn.send_raw(SSL_REQUEST)
        assert reply_prefix(conn) == b"S"
        if sent:
            conn.send_raw(sent)
        half_close(conn.sock)
        answer = read_to_eof(conn.sock)
        # Nothing, or the TLS library's alert record: never a plaintext ErrorResponse (XX000).
        assert answer in (b"",) or answer[0] == TLS_ALERT, answer[:64]
    tls_clean()
    assert quiet_log() == []
