"""Connections over an admission cap are refused as Postgres refuses them: SECURITY.md rows 33, 36.

Row 33 asks for per-source and global pre-auth caps that keep a slowloris from starving real
logins; row 36 that connections come and go without leaking slots. A refused connection is first
answered like any other (its SSLRequest or GSSENCRequest gets its one byte), then, after its
startup packet, gets FATAL 53300 naming the cap — `pgwarden: too many connections from 127.0.0.1
(limit 3)` — as Postgres sends "sorry, too many clients already". Nothing is written before the
startup packet, which is what made libpq report "server sent an error response during SSL
exchange". The courtesy is bounded too: a refused connection holds a small *refusing* slot for at
most a few seconds, and past those slots it is closed without a byte. Every refusal is counted
(`pgwarden_connections_refused_total{reason}`) and logged, rate-limited.

pgwarden here has tiny caps (3 pre-auth connections per source, 10 in all) so that a test can
reach them with a handful of sockets.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.session.admission import MAX_REFUSING_PER_SOURCE, Stage
from proxy.session.handshake import REFUSAL_TIMEOUT
from proxy.session.quiet_log import LINES_PER_WINDOW, WINDOW_SECONDS
from tests.fixtures.adversary import (
    GSSENC_REQUEST,
    HOST,
    QUERY_CANCELED,
    REPLY_TIMEOUT,
    SSL_REQUEST,
    TOO_MANY_CONNECTIONS,
    Credential,
    cancel_packet,
    connect,
    expect_closed,
    expect_fatal,
    first_value,
    is_readable,
    login_raw,
    on_loop,
    preauth_count,
    query_message,
    reply_prefix,
    simple_query,
    startup_packet,
    wait_for,
)
from tests.fixtures.clock import FakeClock
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.rawpg import RawPg, error_fields

pytestmark = pytest.mark.integration

PER_SOURCE, TOTAL = 3, 10
SMALL_CAPS = f"""\
limits:
  max_preauth_per_source: {PER_SOURCE}
  max_preauth_connections: {TOTAL}
  failed_logins:
    per_source: {{burst: 10000, refill_every: 1s}}
    per_user_and_source: {{burst: 10000, refill_every: 1s}}
    per_user: {{burst: 10000, refill_every: 1s}}
"""
REFUSED_HERE = f"pgwarden: too many connections from 127.0.0.1 (limit {PER_SOURCE})"
ALICE = {"user": "alice", "database": "orders"}
# A refused connection's answer must not come before its startup packet: this long is plenty to
# see one that would.
EARLY_ANSWER_WINDOW = 0.3


@pytest.fixture(scope="module")
def pgwarden(
    deployment: PgwardenDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPgwarden]:
    directory: Path = tmp_path_factory.mktemp("pgwarden-small-caps")
    config = deployment.write_files(directory)
    config.write_text(config.read_text() + SMALL_CAPS)
    with running_pgwarden(config) as instance:
        yield instance


@pytest.fixture(scope="module")
def credential(pgwarden: RunningPgwarden) -> Credential:
    issued = pgwarden.grant()
    return issued.username, issued.password


@pytest.fixture
def at_the_cap(pgwarden: RunningPgwarden) -> Iterator[list[RawPg]]:
    """127.0.0.1 holds all its pre-auth slots with idle connections."""
    assert wait_for(lambda: preauth_count(pgwarden) == 0)
    idle = [connect(pgwarden.port) for _ in range(PER_SOURCE)]
    try:
        assert wait_for(lambda: preauth_count(pgwarden) == PER_SOURCE)
        yield idle
    finally:
        for conn in idle:
            conn.close()
        assert wait_for(lambda: preauth_count(pgwarden) == 0)


def refused_count(pgwarden: RunningPgwarden, reason: str = "preauth_per_source") -> float:
    registry = pgwarden.runtime.metrics_registry
    value = registry.get_sample_value("pgwarden_connections_refused_total", {"reason": reason})
    return 0.0 if value is None else value


def refusing_count(pgwarden: RunningPgwarden) -> int:
    admission = pgwarden.runtime.server.ctx.admission
    return on_loop(pgwarden, lambda: admission.count(Stage.REFUSING))


REQUESTS = {"plain": b"", "ssl_request": SSL_REQUEST, "gssenc_request": GSSENC_REQUEST}


@pytest.mark.parametrize("request_", REQUESTS.values(), ids=REQUESTS.keys())
def test_over_the_per_source_cap_a_client_is_told_53300_after_its_startup_packet(
    pgwarden: RunningPgwarden, at_the_cap: list[RawPg], request_: bytes
) -> None:
    before = refused_count(pgwarden)
    with connect(pgwarden.port) as extra:
        assert not is_readable(extra.sock, EARLY_ANSWER_WINDOW)  # nothing before its request
        if request_:
            extra.send_raw(request_)
            assert reply_prefix(extra) == b"N"  # answered as any connection would be
            assert not is_readable(extra.sock, EARLY_ANSWER_WINDOW)
        extra.send_raw(startup_packet(ALICE))
        fields = expect_fatal(extra, TOO_MANY_CONNECTIONS)
    assert fields["M"] == REFUSED_HERE
    assert refused_count(pgwarden) == before + 1
    for conn in at_the_cap:  # the connections holding the slots are not disturbed
        assert not is_readable(conn.sock, 0.0)


def test_another_address_logs_in_while_one_is_at_its_cap(
    pgwarden: RunningPgwarden, at_the_cap: list[RawPg], credential: Credential
) -> None:
    sock = socket.create_connection(
        (HOST, pgwarden.port), timeout=REPLY_TIMEOUT, source_address=("127.0.0.2", 0)
    )
    with RawPg(sock) as conn:
        conn.send_raw(startup_packet(ALICE))
        assert conn.expect_auth_sasl()  # admitted: its own cap is untouched


def test_a_cancel_request_over_the_cap_still_cancels_its_query(
    pgwarden: RunningPgwarden, credential: Credential
) -> None:
    session = login_raw(pgwarden.port, *credential)
    idle: list[RawPg] = []
    try:
        idle = [connect(pgwarden.port) for _ in range(PER_SOURCE)]
        assert wait_for(lambda: preauth_count(pgwarden) == PER_SOURCE)
        session.conn.send_raw(query_message("SELECT pg_sleep(30)"))
        with connect(pgwarden.port) as cancel:  # over the cap: a refusing slot
            cancel.send_raw(cancel_packet(session.process_id, session.secret))
            expect_closed(cancel.sock)  # no reply, as Postgres
        session.conn.sock.settimeout(REPLY_TIMEOUT)
        type_, payload = session.conn.read_message()
        while type_ != b"E":
            type_, payload = session.conn.read_message()
        assert error_fields(payload)["C"] == QUERY_CANCELED
        session.conn.read_until_ready()
        assert first_value(simple_query(session.conn, "SELECT 'still here'")) == "still here"
    finally:
        for conn in idle:
            conn.close()
        session.close()


def test_refusals_past_their_own_cap_are_closed_at_once_without_a_byte(
    pgwarden: RunningPgwarden, at_the_cap: list[RawPg]
) -> None:
    waiting = [connect(pgwarden.port) for _ in range(MAX_REFUSING_PER_SOURCE)]
    try:
        assert wait_for(lambda: refusing_count(pgwarden) == MAX_REFUSING_PER_SOURCE)
        with connect(pgwarden.port) as flood:
            expect_closed(flood.sock, timeout=REFUSAL_TIMEOUT / 2)  # not even waited on
        # The refusals in progress are bounded in time as well: silent ones are dropped.
        for conn in waiting:
            expect_closed(conn.sock, timeout=REFUSAL_TIMEOUT + REPLY_TIMEOUT)
    finally:
        for conn in waiting:
            conn.close()
    assert wait_for(lambda: refusing_count(pgwarden) == 0)


@pytest.fixture
def clocked(
    deployment: PgwardenDeployment, tmp_path: Path
) -> Iterator[tuple[RunningPgwarden, FakeClock]]:
    """A fresh pgwarden with the small caps on a fake clock (the log's windows are on it)."""
    clock = FakeClock()
    config = deployment.write_files(tmp_path)
    config.write_text(config.read_text() + SMALL_CAPS)
    with running_pgwarden(config, clock=clock) as instance:
        yield instance, clock


def test_a_flood_of_refusals_is_counted_in_full_and_logged_a_few_lines_at_a_time(
    clocked: tuple[RunningPgwarden, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    warden, clock = clocked
    caplog.set_level(logging.INFO, logger="proxy")

    def refuse_one() -> None:
        with connect(warden.port) as extra:
            extra.send_raw(startup_packet(ALICE))
            expect_fatal(extra, TOO_MANY_CONNECTIONS)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "refused: pgwarden:" in r.getMessage()]

    idle = [connect(warden.port) for _ in range(PER_SOURCE)]
    try:
        assert wait_for(lambda: preauth_count(warden) == PER_SOURCE)
        flood = 3 * LINES_PER_WINDOW
        for _ in range(flood):
            refuse_one()
        assert refused_count(warden) == flood  # every one counted
        assert len(lines()) == LINES_PER_WINDOW  # a few logged
        assert all(REFUSED_HERE in line for line in lines())
        clock.advance(WINDOW_SECONDS)
        refuse_one()
        held_back = flood - LINES_PER_WINDOW
        assert lines()[-1].endswith(f"({held_back} more like it not logged)")
    finally:
        for conn in idle:
            conn.close()
