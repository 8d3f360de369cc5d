"""The API inside a real pgwarden (`Runtime`) in front of real Postgres: health and metrics,
revoking and killing live psycopg sessions through HTTP, and the webhooks those actions fire; on
each state store (`[sqlite]`, `[postgres]`)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from proxy.api.auth import new_token
from proxy.clock import SYSTEM_CLOCK
from proxy.policy.models import UserName
from tests.fixtures.api import Receiver
from tests.fixtures.pg_state import PgState
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.state_backends import BOTH_STORES

pytestmark = [pytest.mark.integration, BOTH_STORES]


@dataclass
class Api:
    pgwarden: RunningPgwarden
    receiver: Receiver

    def token(self, user: str) -> str:
        secret, record = new_token(UserName(user), SYSTEM_CLOCK.now())
        with self.pgwarden.store.write() as tx:
            tx.insert_token(record)
        return secret

    def call(self, method: str, path: str, body: object = None, token: str | None = None) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.pgwarden.runtime.api.port, timeout=30)
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, None if body is None else json.dumps(body), headers)
            reply = conn.getresponse()
            raw = reply.read()
            is_json = "json" in (reply.getheader("Content-Type") or "")
            return reply.status, json.loads(raw) if is_json else raw.decode()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def api(
    deployment: PgwardenDeployment,
    tmp_path_factory: pytest.TempPathFactory,
    state_store: PgState | None,
) -> Iterator[Api]:
    directory = tmp_path_factory.mktemp("api")
    config = deployment.write_files(directory, state=state_store)
    receiver = Receiver()
    with (directory / "policy.yaml").open("a") as policy:
        policy.write(f"notifications:\n  webhooks:\n    - {{url: '{receiver.url}'}}\n")
    try:
        with running_pgwarden(config) as instance:
            yield Api(instance, receiver)
    finally:
        receiver.close()


def _active(api: Api, alice: str, carol: str) -> tuple[str, dict[str, Any]]:
    status, created = api.call("POST", "/api/v1/requests", {
        "target": "orders", "access_level": "read-only", "duration": "30m", "reason": "api test",
    }, alice)  # fmt: skip
    assert status == 201, created
    status, approved = api.call("POST", f"/api/v1/requests/{created['id']}/approve", {}, carol)
    assert (status, approved["state"]) == (200, "active")
    status, credential = api.call("POST", f"/api/v1/requests/{created['id']}/credentials",
                                  None, alice)  # fmt: skip
    assert status == 201, credential
    return str(created["id"]), credential


def test_health_readiness_and_the_runtime_metrics(api: Api) -> None:
    assert api.call("GET", "/healthz") == (200, {"status": "ok"})
    assert api.call("GET", "/readyz") == (200, {"status": "ready"})
    status, text = api.call("GET", "/metrics")
    assert status == 200
    assert "pgwarden_notification_failures_total" in text
    assert "pgwarden_sessions_active" in text  # the runtime's own registry


def test_a_revocation_through_the_api_ends_a_live_session_and_is_announced(api: Api) -> None:
    alice, carol = api.token("alice"), api.token("carol")
    request_id, credential = _active(api, alice, carol)
    with psycopg.connect(credential["dsn"], connect_timeout=10, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        status, _ = api.call("POST", f"/api/v1/requests/{request_id}/revoke",
                             {"reason": "done"}, carol)  # fmt: skip
        assert status == 200
        with pytest.raises(psycopg.OperationalError, match="was revoked by carol: done"):
            conn.execute("SELECT pg_sleep(10)")
    events = [p["event"] for p in api.receiver.wait_for(3)]
    assert events[:3] == ["request_created", "request_approved", "request_revoked"]


def test_killing_a_live_session_through_the_api(api: Api) -> None:
    alice, dave = api.token("alice"), api.token("dave")
    _, credential = _active(api, alice, dave)
    with psycopg.connect(credential["dsn"], connect_timeout=10, autocommit=True) as conn:
        conn.execute("SELECT 1")
        status, listed = api.call("GET", "/api/v1/sessions", None, dave)
        assert status == 200
        (session,) = [s for s in listed["sessions"] if s["user"] == "alice"]
        assert api.call("DELETE", f"/api/v1/sessions/{session['id']}", None, alice)[0] == 403
        status, killed = api.call("DELETE", f"/api/v1/sessions/{session['id']}",
                                  {"reason": "maintenance"}, dave)  # fmt: skip
        assert (status, killed["ended"]) == (200, True)
        with pytest.raises(psycopg.OperationalError, match="ended by an administrator"):
            conn.execute("SELECT 1")
    assert api.call("GET", "/api/v1/sessions", None, dave)[1]["sessions"] == []
    deadline = time.monotonic() + 10
    while not (kills := _events(api, "session_killed")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kills
    assert kills[-1]["session"]["id"] == session["id"]


def _events(api: Api, kind: str) -> list[Any]:
    posts = [json.loads(body) for _, body in list(api.receiver.posts)]
    return [post for post in posts if post["event"] == kind]
