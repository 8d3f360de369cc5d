"""Every refused login looks the same to the client (SECURITY.md rows 14 and 32).

No grant, a pending request, a wrong password, an expired grant, a revoked grant, an unknown user,
an unknown target: the client gets one FATAL 28P01 `password authentication failed for user "..."`,
identical field for field (read with a raw-socket SCRAM client, since libpq folds the fields into
one string and psycopg has no SQLSTATE for a failed connection) and identical as psycopg reports
it. A re-issued credential replaces the old one; after expiry the old credential is refused, even
once a new grant exists.

Each test runs its own pgwarden on a `FakeClock`, shared with the test's GrantService, so that
expiry is `clock.advance(...)`, never a sleep, and failed-login throttling (which runs on the same
clock) cannot carry over from one test to the next. On each state store (`[sqlite]`, `[postgres]`),
each test's state its own (a file, or a schema).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from proxy.grants.requests import IssuedCredential
from proxy.policy.models import AccessLevelName, TargetName, UserName
from tests.fixtures.clients import login_failure_text, raw_login
from tests.fixtures.clock import FakeClock
from tests.fixtures.pg_state import PgState
from tests.fixtures.pgwarden import RO_ROLE, PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.state_backends import BOTH_STORES

pytestmark = [pytest.mark.integration, BOTH_STORES]

GRANT_DURATION = timedelta(hours=1)
JUST_PAST = timedelta(seconds=1)
# What Postgres says for a failed password login, and what pgwarden must say for every refusal.
REFUSAL_MESSAGE = 'password authentication failed for user "<user>"'
REFUSAL_TEXT = (
    'connection failed: connection to server at "127.0.0.1", port <port> failed: '
    f"FATAL:  {REFUSAL_MESSAGE}"
)
REFUSAL_FIELDS = {"S": "FATAL", "V": "FATAL", "C": "28P01", "M": REFUSAL_MESSAGE}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def warden(
    deployment: PgwardenDeployment,
    tmp_path: Path,
    clock: FakeClock,
    fresh_state_store: PgState | None,
) -> Iterator[RunningPgwarden]:
    config = deployment.write_files(tmp_path, state=fresh_state_store)
    with running_pgwarden(config, clock=clock) as instance:
        yield instance


@dataclass(frozen=True)
class Attempt:
    """A login to try: who, with which password, to which database."""

    user: str
    password: str
    dbname: str = "orders"


def refusal(warden: RunningPgwarden, attempt: Attempt) -> tuple[str, dict[str, str]]:
    """The refusal as psycopg reports it and as the wire carries it, per-connection parts masked."""
    dsn = make_conninfo(
        host=warden.host, port=str(warden.port), user=attempt.user, password=attempt.password,
        dbname=attempt.dbname, sslmode="disable", connect_timeout="10",
    )  # fmt: skip
    text = login_failure_text(dsn)
    raw = raw_login(warden.host, warden.port, attempt.user, attempt.password, attempt.dbname)
    if raw.conn is not None:
        raw.conn.close()
        raise AssertionError(f"raw login of {attempt.user!r} was accepted")
    assert raw.error is not None
    assert not raw.reached_final, "pgwarden accepted the proof and then refused the login"
    fields = dict(raw.error)
    fields["M"] = _masked(fields.get("M", ""), attempt.user, warden.port)
    return _masked(text, attempt.user, warden.port), fields


def _masked(text: str, user: str, port: int) -> str:
    return text.replace(f'"{user}"', '"<user>"').replace(f"port {port} ", "port <port> ")


def logs_in(warden: RunningPgwarden, credential: IssuedCredential) -> bool:
    """A control: this credential works now (a query runs as the read-only role)."""
    with psycopg.connect(warden.dsn(credential)) as conn:
        return conn.execute("SELECT current_user").fetchone() == (RO_ROLE,)


def assert_refused_like_a_bad_password(warden: RunningPgwarden, attempt: Attempt) -> None:
    text, fields = refusal(warden, attempt)
    assert text == REFUSAL_TEXT
    assert fields == REFUSAL_FIELDS


# -- the cases: each prepares the state and returns the attempt that must be refused -----------


def no_grant(warden: RunningPgwarden, clock: FakeClock) -> Attempt:
    assert logs_in(warden, warden.grant("alice"))  # pgwarden works; bob simply has no grant
    return Attempt("bob", secrets.token_urlsafe(24))


def pending_request(warden: RunningPgwarden, clock: FakeClock) -> Attempt:
    warden.grants.create_request(
        UserName("bob"), TargetName("orders"), AccessLevelName("read-only"), GRANT_DURATION, "test"
    )
    return Attempt("bob", secrets.token_urlsafe(24))


def wrong_password(warden: RunningPgwarden, clock: FakeClock) -> Attempt:
    credential = warden.grant("alice")
    assert logs_in(warden, credential)
    return Attempt("alice", "not-" + credential.password)


def expired_grant(warden: RunningPgwarden, clock: FakeClock) -> Attempt:
    credential = warden.grant("alice", duration=GRANT_DURATION)
    assert logs_in(warden, credential)
    clock.advance(GRANT_DURATION + JUST_PAST)
    return Attempt("alice", credential.password)


def revoked_grant(warden: RunningPgwarden, clock: FakeClock) -> Attempt:
    credential = warden.grant("alice")
    assert logs_in(warden, credential)
    warden.grants.revoke(credential.request_id, UserName("carol"), "revoked by the test")
    return Attempt("alice", credential.password)


def unknown_user(warden: RunningPgwarden, clock: FakeClock) -> Attempt:
    credential = warden.grant("alice")
    return Attempt("mallory", credential.password)


def unknown_target(warden: RunningPgwarden, clock: FakeClock) -> Attempt:
    credential = warden.grant("alice")
    assert logs_in(warden, credential)
    # Without the proof, a wrong database is refused like anything else (with it: 3D000, below).
    return Attempt("alice", "not-" + credential.password, dbname="payments")


def default_database(warden: RunningPgwarden, clock: FakeClock) -> Attempt:
    credential = warden.grant("alice")
    return Attempt("alice", "not-" + credential.password, dbname="postgres")


CASES: dict[str, Callable[[RunningPgwarden, FakeClock], Attempt]] = {
    "no grant": no_grant,
    "pending request": pending_request,
    "wrong password": wrong_password,
    "expired grant": expired_grant,
    "revoked grant": revoked_grant,
    "unknown user": unknown_user,
    "unknown target": unknown_target,
    "another database, wrong password": default_database,
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_every_refused_login_gets_the_same_28p01(
    warden: RunningPgwarden, clock: FakeClock, case: Callable[[RunningPgwarden, FakeClock], Attempt]
) -> None:
    assert_refused_like_a_bad_password(warden, case(warden, clock))


@pytest.mark.parametrize("dbname", ["postgres", "payments"])
def test_a_proven_credential_for_another_database_is_told_3d000(
    warden: RunningPgwarden, dbname: str
) -> None:
    credential = warden.grant("alice")
    expected = (
        f'pgwarden: your grant {credential.request_id} is for database "orders", not "{dbname}"'
    )
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(warden.dsn(credential, dbname=dbname)).close()
    assert expected in str(caught.value)
    raw = raw_login(warden.host, warden.port, "alice", credential.password, dbname)
    assert raw.conn is None
    assert raw.error is not None
    assert raw.reached_final  # told only after the proof was accepted
    assert (raw.error["S"], raw.error["C"], raw.error["M"]) == ("FATAL", "3D000", expected)
    assert logs_in(warden, credential)  # not counted as a failure; the right database works


def test_a_reissued_credential_replaces_the_old_one(warden: RunningPgwarden) -> None:
    old = warden.grant("alice")
    assert logs_in(warden, old)
    new = warden.grants.issue_credential(old.request_id, UserName("alice"))
    assert new.password != old.password
    assert_refused_like_a_bad_password(warden, Attempt("alice", old.password))
    assert logs_in(warden, new)


def test_the_old_credential_is_refused_after_expiry_even_with_a_new_grant(
    warden: RunningPgwarden, clock: FakeClock
) -> None:
    old = warden.grant("alice", duration=GRANT_DURATION)
    assert logs_in(warden, old)  # connected, then disconnected
    clock.advance(GRANT_DURATION + JUST_PAST)
    assert_refused_like_a_bad_password(warden, Attempt("alice", old.password))
    new = warden.grant("alice", duration=GRANT_DURATION)
    assert logs_in(warden, new)
    assert_refused_like_a_bad_password(warden, Attempt("alice", old.password))


def test_a_grant_works_until_the_instant_before_its_end(
    warden: RunningPgwarden, clock: FakeClock
) -> None:
    credential = warden.grant("alice", duration=GRANT_DURATION)
    clock.advance(GRANT_DURATION - JUST_PAST)
    assert logs_in(warden, credential)
    clock.advance(JUST_PAST)  # at ends_at the grant is over (the window is exclusive)
    assert_refused_like_a_bad_password(warden, Attempt("alice", credential.password))


def test_the_scram_challenge_does_not_tell_a_real_user_from_an_unknown_one(
    warden: RunningPgwarden,
) -> None:
    credential = warden.grant("alice")
    challenges: dict[str, list[dict[str, str]]] = {}
    for user in ("alice", "alice", "mallory", "mallory"):
        login = raw_login(warden.host, warden.port, user, "not-" + credential.password)
        assert login.conn is None
        challenges.setdefault(user, []).append(login.server_first)
    real, mock = challenges["alice"], challenges["mallory"]
    # The salt of a user is stable from one attempt to the next, real or not (a salt that changed
    # on every attempt would mark the user as unknown), and the two look alike.
    assert real[0]["s"] == real[1]["s"]
    assert mock[0]["s"] == mock[1]["s"]
    assert len(mock[0]["s"]) == len(real[0]["s"])
    assert mock[0]["i"] == real[0]["i"]
    assert len(mock[0]["r"]) == len(real[0]["r"])
    assert sorted(mock[0]) == sorted(real[0])
