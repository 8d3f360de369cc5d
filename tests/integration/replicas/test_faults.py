"""Faults across replicas: revocations on one replica end sessions on another.

Three replicas (a, b, c) share one state store (tests/fixtures/replicas.py). What each test
checks is what a client saw (the FATAL, its SQLSTATE) and what the database saw (the session's
backend gone from the upstream's pg_stat_activity): no backend outlives its grant on any replica.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
import pytest

from tests.fixtures.clients import raw_login
from tests.fixtures.pgwarden import TARGET_DB
from tests.fixtures.rawpg import RawPg, RawPgError, error_fields
from tests.fixtures.replicas import NAMES, Credential, Replicas

BOUND = 10.0  # seconds: generous; the latencies themselves are measured by bench/ha_trials.py
REVOKED_FATAL = 'pgwarden: access to "orders" (read-only) was revoked by carol: incident over'
ADMIN_SHUTDOWN = "57P01"
AUTH_FAILED = 'password authentication failed for user "alice"'


def fatal_of(session: psycopg.Connection[Any], bound: float = BOUND) -> psycopg.Error:
    """The error the session's next statement gets once pgwarden has written to it (a FATAL
    arrives unasked); fails if nothing arrives within `bound` seconds."""
    readable, _, _ = select.select([session.fileno()], [], [], bound)
    assert readable, f"the session was not ended within {bound} s"
    with pytest.raises(psycopg.Error) as raised:
        session.execute("SELECT 1")
    return raised.value


@pytest.mark.parametrize(("revoke_on", "session_on"), [("a", "c"), ("b", "a"), ("c", "b")])
def test_revoke_on_one_replica_ends_the_session_on_another(
    replicas: Replicas, revoke_on: str, session_on: str
) -> None:
    # Issued where the session logs in: a login elsewhere may race the announcement
    # (test_a_credential_issued_on_one_replica_logs_in_at_once_on_another).
    credential = replicas.grant(via=(revoke_on, revoke_on, session_on))
    session = replicas.session(session_on, credential)
    pid = session.info.backend_pid
    assert session.execute("SELECT count(*) FROM items").fetchone() is not None
    assert replicas.backend_alive(pid)

    status, revoked = replicas.revoke(credential.request_id, via=revoke_on)
    assert (status, revoked["state"]) == (200, "revoked"), revoked

    error = fatal_of(session)
    assert (error.sqlstate, str(error).strip()) == (ADMIN_SHUTDOWN, REVOKED_FATAL)
    assert replicas.wait_gone(pid, BOUND) is not None, "the backend outlived its grant"
    refused = login_error(replicas, session_on, credential)
    assert "password authentication failed" in refused


def login_error(replicas: Replicas, via: str, credential: Credential) -> str:
    with pytest.raises(psycopg.OperationalError) as raised:
        replicas[via].connect(credential).close()
    return str(raised.value)


def test_a_revocation_whose_notify_is_lost_still_ends_the_session(replicas: Replicas) -> None:
    credential = replicas.grant(via=("a", "b", "c"))
    session = replicas.session("c", credential)
    pid = session.info.backend_pid
    session.execute("SELECT 1")

    assert replicas.drop_state_connections("c") >= 1  # c's change feed is reconnecting now
    status, revoked = replicas.revoke(credential.request_id, via="a")
    assert (status, revoked["state"]) == (200, "revoked"), revoked

    error = fatal_of(session)
    assert (error.sqlstate, str(error).strip()) == (ADMIN_SHUTDOWN, REVOKED_FATAL)
    assert replicas.wait_gone(pid, BOUND) is not None, "the backend outlived its grant"


ROUNDS = 30


def test_a_credential_issued_on_one_replica_logs_in_at_once_on_another(
    replicas: Replicas,
) -> None:
    """Read-your-writes across replicas: the client logs in the moment the API answers, through
    another replica, before that replica may have heard the change announced."""
    refused = []
    for round_ in range(ROUNDS):
        issued_on, login_on = NAMES[round_ % 3], NAMES[(round_ + 1) % 3]
        credential = replicas.grant(via=(issued_on, issued_on, issued_on))
        error = replicas.login(login_on, credential)
        if error is not None:
            refused.append(f"issued on {issued_on}, login on {login_on}: {error.get('M')}")
        replicas.revoke(credential.request_id, via=issued_on)
    assert refused == [], f"{len(refused)} of {ROUNDS} refused:\n" + "\n".join(refused)


def test_a_login_right_after_a_revocation_elsewhere_is_refused_or_ended(
    replicas: Replicas,
) -> None:
    """The other side of the same race: a revoked credential used through another replica the
    moment the revocation returns is refused, or let in from memory and then ended with the
    revocation, its backend with it."""
    for round_ in range(ROUNDS):
        revoked_on, login_on = NAMES[round_ % 3], NAMES[(round_ + 2) % 3]
        credential = replicas.grant(via=(login_on, login_on, login_on))
        status, _ = replicas.revoke(credential.request_id, via=revoked_on)
        assert status == 200
        greeting: list[tuple[bytes, bytes]] = []
        conn, refused = raw_session(replicas, login_on, credential, greeting)
        if conn is None:
            assert (refused["C"], refused["M"]) == ("28P01", AUTH_FAILED), refused
            continue
        with conn:
            conn.sock.settimeout(BOUND)
            kind, payload = conn.read_message()  # sent unasked: the session ended
        fatal = error_fields(payload)
        assert (kind, fatal["C"]) == (b"E", ADMIN_SHUTDOWN), fatal
        assert "was revoked by carol: incident over" in fatal["M"]
        (pid,) = [int.from_bytes(p[:4], "big") for k, p in greeting if k == b"K"]
        assert replicas.wait_gone(pid, BOUND) is not None


def raw_session(
    replicas: Replicas, via: str, credential: Credential, greeting: list[tuple[bytes, bytes]]
) -> tuple[RawPg | None, dict[str, str]]:
    """A raw login through `via`: (the connection, {}) or (None, the refusal's fields)."""
    try:
        login = raw_login("127.0.0.1", replicas[via].proxy_port, credential.user,
                          credential.password, TARGET_DB, keep_greeting=greeting)  # fmt: skip
    except RawPgError as exc:
        return None, exc.fields
    return login.conn, login.error or {}
