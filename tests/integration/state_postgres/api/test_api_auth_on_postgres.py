"""tests/unit/api/test_api_auth.py on a PostgreSQL state store (conftest.py), and what its
SQLite-file test checks, asked of the database instead: only the token's digest is stored, its
last use written at most once a minute, and token writes do not move the change counter that
every server's enforcer polls."""

from __future__ import annotations

from datetime import timedelta

from proxy.api.auth import token_digest
from tests.fixtures.api import ApiHarness
from tests.fixtures.clock import FakeClock
from tests.fixtures.pg_state import PgState
from tests.unit.api.test_api_auth import (
    test_a_bad_authorization_header_is_401,
    test_a_revoked_token_stops_working,
    test_a_user_removed_from_the_policy_loses_api_access,
    test_every_api_call_without_a_token_is_401,
    test_health_and_metrics_need_no_token,
    test_liveness_and_readiness_answer_in_json,
)

__all__ = [
    "test_a_bad_authorization_header_is_401",
    "test_a_revoked_token_stops_working",
    "test_a_user_removed_from_the_policy_loses_api_access",
    "test_every_api_call_without_a_token_is_401",
    "test_health_and_metrics_need_no_token",
    "test_liveness_and_readiness_answer_in_json",
]


def test_only_the_digest_is_stored_in_postgres_and_last_use_is_written_once_a_minute(
    api: ApiHarness, clock: FakeClock, pg_state: PgState
) -> None:
    secret = api.token("alice")
    changes = api.store.changes()
    api.call("GET", "/api/v1/requests", user="alice")
    with api.store.read() as tx:
        (record,) = tx.tokens()
    assert (record.digest, record.last_used_at) == (token_digest(secret), clock.now())
    clock.advance(30)
    api.call("GET", "/api/v1/requests", user="alice")
    clock.advance(timedelta(minutes=1))
    api.call("GET", "/api/v1/requests", user="alice")
    with api.store.read() as tx:
        assert tx.tokens()[0].last_used_at == clock.now()
    assert api.store.changes() == changes  # token writes do not wake any server's enforcer
    (rows,) = pg_state.query("SELECT count(*), string_agg(t::text, ' ') FROM api_tokens t")
    assert rows[0] == 1
    assert secret not in rows[1]
