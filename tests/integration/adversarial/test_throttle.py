"""Failed-login throttling that a stranger cannot turn against a user: SECURITY.md rows 14 and 17.

Row 17: failed logins are throttled per source address and per (user, source) pair, never by
locking an account: a stranger who knows a user name, sending malformed SASL or wrong passwords
from anywhere, must not stop that user's correct login from another address. A throttled attempt
is refused cheaply and does not restart a refill. Same 28P01 (no enumeration), no pre-auth slot
held. Row 14: the refusal a throttled client gets is the 28P01 of a wrong password, the same for
a real user and an unknown one.

Each test runs its own pgwarden with the default limits on a `FakeClock` (refills are
`clock.advance(...)`, never sleeps). Linux routes all of 127.0.0.0/8 to loopback, so the stranger
connects from 127.0.0.2 (and his friends from 127.0.0.3...) while alice connects from 127.0.0.1.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from proxy.auth import ScramClient
from proxy.grants.requests import IssuedCredential
from tests.fixtures.adversary import (
    HOST,
    INVALID_PASSWORD,
    PROTOCOL_VIOLATION,
    REPLY_TIMEOUT,
    expect_closed,
    expect_fatal,
    preauth_count,
    sasl_initial,
    scram_first,
    startup_packet,
    wait_for,
)
from tests.fixtures.clock import FakeClock
from tests.fixtures.pgwarden import RO_ROLE, PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.rawpg import RawPg, error_fields

pytestmark = pytest.mark.integration

ALICE_HOME, STRANGER = "127.0.0.1", "127.0.0.2"
# The defaults (proxy/config.py): a source may fail 30 times, a (user, source) pair 10 times and
# then once every 6 s; a user failing 10 times from anywhere has its further failures answered
# 1 s late.
SOURCE_BURST, PAIR_BURST, PAIR_REFILL, USER_BURST = 30, 10, 6, 10
FAILURE_DELAY = 1.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def warden(
    deployment: PgwardenDeployment, tmp_path: Path, clock: FakeClock
) -> Iterator[RunningPgwarden]:
    """pgwarden with the default limits (the throttle bites), fresh for each test."""
    with running_pgwarden(deployment.write_files(tmp_path), clock=clock) as instance:
        yield instance


@dataclass(frozen=True)
class Outcome:
    """How a raw login attempt ended."""

    checked: bool  # pgwarden ran the SCRAM exchange (False: refused unchecked)
    error: dict[str, str] | None  # the ErrorResponse, or None: logged in


def connect_from(source: str, port: int) -> RawPg:
    return RawPg(
        socket.create_connection((HOST, port), timeout=REPLY_TIMEOUT, source_address=(source, 0))
    )


def start(conn: RawPg, user: str) -> list[str] | dict[str, str]:
    """Send a StartupMessage: the SASL mechanisms offered, or the ErrorResponse that came
    instead (then the connection must close with nothing more)."""
    conn.send_raw(startup_packet({"user": user, "database": "orders"}))
    type_, payload = conn.read_message()
    if type_ == b"E":
        expect_closed(conn.sock)
        return error_fields(payload)
    assert type_ == b"R", (type_, payload)
    return [m.decode() for m in payload[4:].split(b"\0") if m]


def attempt(source: str, port: int, user: str, password: str) -> Outcome:
    """A whole SCRAM login from `source`."""
    with connect_from(source, port) as conn:
        offered = start(conn, user)
        if isinstance(offered, dict):
            return Outcome(checked=False, error=offered)
        client = ScramClient("", password)
        conn.send(b"p", scram_first(conn, client, offered))
        type_, payload = conn.read_message()
        if type_ == b"E":
            fields = error_fields(payload)
            expect_closed(conn.sock)
            return Outcome(checked=True, error=fields)
        conn.read_until_ready()
        conn.terminate()
        return Outcome(checked=True, error=None)


def malformed_sasl(source: str, port: int, user: str) -> Outcome:
    """A StartupMessage, then a SASLInitialResponse that is not SCRAM at all."""
    with connect_from(source, port) as conn:
        offered = start(conn, user)
        if isinstance(offered, dict):
            return Outcome(checked=False, error=offered)
        conn.send_raw(sasl_initial(b"this is not scram"))
        return Outcome(checked=True, error=expect_fatal(conn, PROTOCOL_VIOLATION))


def refused_like_a_wrong_password(outcome: Outcome, user: str) -> bool:
    return outcome.error == {
        "S": "FATAL", "V": "FATAL", "C": INVALID_PASSWORD,
        "M": f'password authentication failed for user "{user}"',
    }  # fmt: skip


def logs_in(warden: RunningPgwarden, credential: IssuedCredential) -> bool:
    """alice's own client (libpq), from 127.0.0.1."""
    with psycopg.connect(warden.dsn(credential)) as conn:
        return conn.execute("SELECT current_user").fetchone() == (RO_ROLE,)


def failures(warden: RunningPgwarden, reason: str) -> float:
    labels = {"target": "orders", "reason": reason}
    value = warden.runtime.metrics_registry.get_sample_value(
        "pgwarden_login_failures_total", labels
    )
    return 0.0 if value is None else value


def test_a_stranger_breaking_scram_and_guessing_from_another_address_never_stops_alice(
    warden: RunningPgwarden,
) -> None:
    credential = warden.grant("alice")
    wrong = "not-" + credential.password
    outcomes: list[Outcome] = []
    for round_ in range(3 * PAIR_BURST):
        outcomes.append(malformed_sasl(STRANGER, warden.port, "alice"))
        outcomes.append(attempt(STRANGER, warden.port, "alice", wrong))
        if round_ >= PAIR_BURST:  # his (alice, 127.0.0.2) pair is spent: he sprays names
            outcomes.append(malformed_sasl(STRANGER, warden.port, f"probe{round_}"))
        assert logs_in(warden, credential), f"alice refused in round {round_}"
    # The stranger throttled himself: first his (alice, 127.0.0.2) pair, then his address.
    assert all(o.error is not None for o in outcomes)
    unchecked = [o for o in outcomes if not o.checked]
    assert len(unchecked) == len(outcomes) - SOURCE_BURST
    assert all(refused_like_a_wrong_password(o, "alice") for o in unchecked[:2])
    assert failures(warden, "wrong_password") == PAIR_BURST  # only checked guesses count
    assert failures(warden, "protocol_violation") == SOURCE_BURST - PAIR_BURST
    assert failures(warden, "throttled_user_and_source") >= PAIR_BURST
    assert failures(warden, "throttled_source") >= PAIR_BURST


def test_a_client_retrying_every_second_while_throttled_gets_in_once_its_bucket_refills(
    warden: RunningPgwarden, clock: FakeClock
) -> None:
    credential = warden.grant("alice")
    for _ in range(PAIR_BURST):  # a typo, again and again
        wrong = attempt(ALICE_HOME, warden.port, "alice", "not-" + credential.password)
        assert wrong.checked
        assert refused_like_a_wrong_password(wrong, "alice")
    for second in range(1, PAIR_REFILL):
        clock.advance(1)
        retry = attempt(ALICE_HOME, warden.port, "alice", credential.password)
        # Refused unchecked, spending nothing: the refill is not pushed back by the retries.
        assert not retry.checked, f"let in after {second} s"
        assert refused_like_a_wrong_password(retry, "alice")
    clock.advance(1)
    assert attempt(ALICE_HOME, warden.port, "alice", credential.password).error is None
    assert logs_in(warden, credential)


def test_a_throttled_address_gets_the_same_28p01_for_a_real_and_an_unknown_user_at_once(
    warden: RunningPgwarden,
) -> None:
    credential = warden.grant("alice")
    for _ in range(SOURCE_BURST):  # broken SCRAM under random names: the address alone pays
        assert malformed_sasl(STRANGER, warden.port, f"probe{secrets.token_hex(4)}").checked
    for user in ("alice", "mallory"):
        outcome = attempt(STRANGER, warden.port, user, credential.password)
        assert not outcome.checked  # no exchange, no PBKDF2, no grant lookup
        assert refused_like_a_wrong_password(outcome, user)
    assert wait_for(lambda: preauth_count(warden) == 0)
    assert logs_in(warden, credential)  # from 127.0.0.1
    assert failures(warden, "throttled_source") == 2  # counted with their true reason
    assert failures(warden, "protocol_violation") == SOURCE_BURST


def test_hanging_up_before_scram_is_free_and_abandoning_it_counts_against_the_address_only(
    warden: RunningPgwarden,
) -> None:
    credential = warden.grant("alice")
    for _ in range(SOURCE_BURST + 5):  # psql does this to prompt for the password
        with connect_from(STRANGER, warden.port) as conn:
            assert isinstance(start(conn, "alice"), list)
    assert attempt(STRANGER, warden.port, "alice", credential.password).error is None
    quitter = "127.0.0.3"
    for _ in range(SOURCE_BURST):
        with connect_from(quitter, warden.port) as conn:
            mechanisms = start(conn, "alice")
            assert isinstance(mechanisms, list)
            scram_first(conn, ScramClient("", credential.password), mechanisms)
    assert wait_for(lambda: failures(warden, "abandoned_exchange") == SOURCE_BURST)
    outcome = attempt(quitter, warden.port, "alice", credential.password)
    assert not outcome.checked
    assert refused_like_a_wrong_password(outcome, "alice")
    assert logs_in(warden, credential)  # the quitter's address paid, not alice


def test_a_user_failing_from_many_addresses_gets_late_answers_and_is_never_refused(
    warden: RunningPgwarden,
) -> None:
    credential = warden.grant("alice")
    guessers = [f"127.0.0.{10 + i}" for i in range(USER_BURST + 1)]
    for guesser in guessers[:USER_BURST]:
        assert attempt(guesser, warden.port, "alice", "guess").checked
    began = time.monotonic()
    late = attempt(guessers[-1], warden.port, "alice", "guess")
    assert time.monotonic() - began >= FAILURE_DELAY * 0.9
    assert late.checked
    assert refused_like_a_wrong_password(late, "alice")
    began = time.monotonic()
    assert logs_in(warden, credential)  # a correct login is never delayed, never refused
    assert time.monotonic() - began < FAILURE_DELAY * 0.9
