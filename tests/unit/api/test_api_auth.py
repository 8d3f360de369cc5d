"""Bearer tokens: every API call is authenticated; health and metrics are not (SECURITY.md 44)."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import timedelta

import pytest

from proxy.api.auth import TOKEN_PREFIX, new_token, token_digest
from proxy.policy.models import UserName
from tests.fixtures.api import ApiHarness, PolicyBox
from tests.fixtures.clock import FakeClock

ENDPOINTS = [
    ("POST", "/api/v1/requests"),
    ("GET", "/api/v1/requests"),
    ("GET", "/api/v1/requests/0123456789abcdef"),
    ("POST", "/api/v1/requests/0123456789abcdef/approve"),
    ("POST", "/api/v1/requests/0123456789abcdef/deny"),
    ("POST", "/api/v1/requests/0123456789abcdef/cancel"),
    ("POST", "/api/v1/requests/0123456789abcdef/revoke"),
    ("POST", "/api/v1/requests/0123456789abcdef/credentials"),
    ("GET", "/api/v1/sessions"),
    ("DELETE", "/api/v1/sessions/0123456789abcdef"),
    ("GET", "/api/v1/no-such-thing"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_api_call_without_a_token_is_401(api: ApiHarness, method: str, path: str) -> None:
    reply = api.call(method, path, {"target": "orders"})
    assert (reply.status, reply.code) == (401, "unauthenticated")
    assert "missing bearer token" in reply.message
    assert "pgwarden token create" in reply.message
    assert reply.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("header", "wanted"),
    [
        ("Basic YWxpY2U6c2VjcmV0", "must be: Bearer <token>"),
        ("Bearer", "must be: Bearer <token>"),
        ("Bearer not-a-token", "invalid token"),
        ("Bearer " + TOKEN_PREFIX + "x" * 500, "invalid token"),
        ("Bearer " + TOKEN_PREFIX + "A" * 43, "unknown token"),
    ],
)
def test_a_bad_authorization_header_is_401(api: ApiHarness, header: str, wanted: str) -> None:
    reply = api.call("GET", "/api/v1/requests", headers={"Authorization": header})
    assert (reply.status, reply.code) == (401, "unauthenticated")
    assert wanted in reply.message


def test_a_revoked_token_stops_working(api: ApiHarness, clock: FakeClock) -> None:
    assert api.call("GET", "/api/v1/requests", user="alice").status == 200
    with api.store.read() as tx:
        (record,) = tx.tokens()
    with api.store.write() as tx:
        assert tx.revoke_token(record.id, clock.now())
        assert not tx.revoke_token(record.id, clock.now())  # once
    reply = api.call("GET", "/api/v1/requests", user="alice")
    assert (reply.status, reply.code) == (401, "unauthenticated")
    assert "this token was revoked" in reply.message


def test_a_user_removed_from_the_policy_loses_api_access(
    api: ApiHarness, policy: PolicyBox
) -> None:
    assert api.call("GET", "/api/v1/requests", user="bob").status == 200
    users = {name: user for name, user in policy.current.users.items() if name != "bob"}
    policy.current = replace(policy.current, users=users)
    reply = api.call("GET", "/api/v1/requests", user="bob")
    assert (reply.status, reply.code) == (401, "unauthenticated")
    assert "no longer in the policy" in reply.message


def test_only_the_digest_is_stored_and_last_use_is_written_at_most_once_a_minute(
    api: ApiHarness, clock: FakeClock
) -> None:
    secret = api.token("alice")
    changes = api.store.changes()
    api.call("GET", "/api/v1/requests", user="alice")
    with api.store.read() as tx:
        (record,) = tx.tokens()
    assert record.digest == token_digest(secret)
    assert record.last_used_at == clock.now()
    clock.advance(30)
    api.call("GET", "/api/v1/requests", user="alice")
    with api.store.read() as tx:
        assert tx.tokens()[0].last_used_at == record.last_used_at
    clock.advance(timedelta(minutes=1))
    api.call("GET", "/api/v1/requests", user="alice")
    with api.store.read() as tx:
        assert tx.tokens()[0].last_used_at == clock.now()
    assert api.store.changes() == changes  # token writes do not wake the enforcer
    raw = api.store.path.read_bytes() + api.store.path.with_name("state.db-wal").read_bytes()
    assert secret.encode() not in raw
    with sqlite3.connect(api.store.path) as conn:
        assert conn.execute("SELECT count(*) FROM api_tokens").fetchone() == (1,)


def test_tokens_are_long_random_and_prefixed(clock: FakeClock) -> None:
    secrets_ = {new_token(UserName("alice"), clock.now())[0] for _ in range(50)}
    assert len(secrets_) == 50
    for secret in secrets_:
        assert secret.startswith(TOKEN_PREFIX)
        assert len(secret) == len(TOKEN_PREFIX) + 43  # 32 bytes, base64url without padding


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_and_metrics_need_no_token(api: ApiHarness, path: str) -> None:
    reply = api.call("GET", path)
    assert reply.status == 200


def test_liveness_and_readiness_answer_in_json(api: ApiHarness) -> None:
    assert api.call("GET", "/healthz").body == {"status": "ok"}
    assert api.call("GET", "/readyz").body == {"status": "ready"}
    api.context.readiness_checks.append(lambda: "the audit log is not writable")

    def broken() -> str | None:
        raise RuntimeError("boom")

    api.context.readiness_checks.append(broken)
    reply = api.call("GET", "/readyz")
    assert reply.status == 503
    assert reply.body == {
        "status": "not_ready",
        "problems": ["the audit log is not writable", "broken failed (see the log)"],
    }
