"""The metrics a running pgwarden exports, read from its registry after real sessions; on each
state store (`[sqlite]`, `[postgres]`), since the request and grant gauges are read from it."""

from __future__ import annotations

import secrets
import time
from datetime import timedelta

import psycopg
import pytest
from prometheus_client import generate_latest

from proxy.grants.requests import IssuedCredential
from tests.fixtures.clock import FakeClock
from tests.fixtures.pgwarden import RunningPgwarden
from tests.fixtures.state_backends import BOTH_STORES

pytestmark = [pytest.mark.integration, BOTH_STORES]


def fresh_grant(
    warden: RunningPgwarden, clock: FakeClock, duration: timedelta = timedelta(hours=1)
) -> IssuedCredential:
    """A new grant whose credential is the newest: a login picks the most recently issued
    credential, and with a fake clock that stands still two grants would tie."""
    clock.advance(timedelta(seconds=1))
    return warden.grant(duration=duration)


def sample(warden: RunningPgwarden, name: str, **labels: str) -> float:
    value = warden.runtime.metrics_registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def exposition(warden: RunningPgwarden) -> str:
    return generate_latest(warden.runtime.metrics_registry).decode()


def wait_for(condition: object, bound: float = 5.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_session_is_counted_from_start_to_end_with_its_queries_and_bytes(
    warden: RunningPgwarden, clock: FakeClock
) -> None:
    labels = {"target": "orders", "access_level": "read-only"}
    started = sample(warden, "pgwarden_sessions_started_total", **labels)
    queries = sample(warden, "pgwarden_queries_total", target="orders")
    credential = fresh_grant(warden, clock)
    with psycopg.connect(warden.dsn(credential)) as conn:
        for _ in range(5):
            conn.execute("SELECT 1").fetchone()
        assert sample(warden, "pgwarden_sessions_active", **labels) == 1
    wait_for(lambda: sample(warden, "pgwarden_sessions_active", **labels) == 0)
    assert sample(warden, "pgwarden_sessions_started_total", **labels) == started + 1
    ended = {**labels, "reason": "client_left"}
    assert sample(warden, "pgwarden_sessions_ended_total", **ended) >= 1
    assert sample(warden, "pgwarden_queries_total", target="orders") >= queries + 5
    assert sample(warden, "pgwarden_query_duration_seconds_count", target="orders") >= 5
    assert sample(warden, "pgwarden_bytes_relayed_total", target="orders", direction="to_client")


def test_random_user_and_database_names_create_no_series(warden: RunningPgwarden) -> None:
    before = exposition(warden)
    names = [f"probe{secrets.token_hex(4)}" for _ in range(5)]
    for name in names:
        dsn = f"host=127.0.0.1 port={warden.port} user={name} password=x dbname={name}"
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=5).close()
    after = exposition(warden)
    assert not any(name in after for name in names)
    assert len(after.splitlines()) - len(before.splitlines()) <= 4  # one new label set at most
    failures = 'pgwarden_login_failures_total{reason="unknown_user",target="_other"}'
    assert failures in after


def test_an_expired_session_records_its_kill_latency(
    warden: RunningPgwarden, clock: FakeClock
) -> None:
    before = sample(warden, "pgwarden_kill_latency_seconds_count")
    credential = fresh_grant(warden, clock, timedelta(minutes=5))
    with psycopg.connect(warden.dsn(credential), autocommit=True) as conn:
        conn.execute("SELECT 1")
        clock.advance(timedelta(minutes=5, seconds=1))
        wait_for(lambda: sample(warden, "pgwarden_kill_latency_seconds_count") == before + 1)
    labels = {"target": "orders", "access_level": "read-only", "reason": "expired"}
    assert sample(warden, "pgwarden_sessions_ended_total", **labels) >= 1


def test_no_secret_appears_in_the_metrics(warden: RunningPgwarden, clock: FakeClock) -> None:
    credential = fresh_grant(warden, clock)
    with psycopg.connect(warden.dsn(credential)) as conn:
        conn.execute("SELECT 1")
    text = exposition(warden)
    assert credential.password not in text
    assert credential.username not in text  # user names are never labels


def test_requests_and_active_grants_are_published_from_the_store(
    warden: RunningPgwarden, clock: FakeClock
) -> None:
    fresh_grant(warden, clock)
    labels = {"target": "orders", "access_level": "read-only"}
    wait_for(lambda: sample(warden, "pgwarden_grants_active", **labels) >= 1)
    assert sample(warden, "pgwarden_requests", state="active") >= 1
    assert (
        warden.runtime.metrics_registry.get_sample_value("pgwarden_requests", {"state": "denied"})
        is not None
    )  # every state has a series, zero or not
