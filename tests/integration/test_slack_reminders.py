"""Reminders before a grant ends, through a real pgwarden (`Runtime`) on a fake clock, with the
real `slack_sdk` talking to the fake Slack: the requester is DM'd at each `sessions.warn_before`
offset (5m and 1m by default), once each, even when the leader's sweep runs again (what a new
leader does after a failover); on each state store."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from proxy.api.auth import new_token
from proxy.clock import SYSTEM_CLOCK
from proxy.policy.models import UserName
from tests.fixtures.clock import FakeClock
from tests.fixtures.pg_state import PgState
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.slack import FakeSlack
from tests.fixtures.state_backends import BOTH_STORES

pytestmark = [pytest.mark.integration, BOTH_STORES]

POLICY = """\
notifications:
  slack:
    bot_token_env: PGWARDEN_TEST_SLACK_TOKEN
    signing_secret_env: PGWARDEN_TEST_SLACK_SECRET
    channels: {orders: C0ORDERS}
    users: {carol: UCAROL, alice: UALICE}
    api_url: API_URL
"""
SETTLE = 10.0  # seconds: a bound on waiting for the leader's next sweep and delivery


@dataclass
class World:
    pgwarden: RunningPgwarden
    slack: FakeSlack
    clock: FakeClock

    def api(self, method: str, path: str, user: str, body: object = None) -> tuple[int, Any]:
        secret, record = new_token(UserName(user), self.clock.now())
        with self.pgwarden.store.write() as tx:
            tx.insert_token(record)
        headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", self.pgwarden.runtime.api.port, timeout=30)
        try:
            conn.request(method, path, json.dumps(body or {}).encode(), headers)
            reply = conn.getresponse()
            return reply.status, json.loads(reply.read())
        finally:
            conn.close()

    def reminders(self) -> list[str]:
        return [str(c.params["text"]) for c in self.slack.named("chat.postMessage",
                channel="DUALICE") if "ends in" in str(c.params.get("text"))]  # fmt: skip

    def wait_reminders(self, count: int) -> list[str]:
        deadline = time.monotonic() + SETTLE
        while len(self.reminders()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.reminders()


@pytest.fixture(scope="module")
def world(
    deployment: PgwardenDeployment,
    tmp_path_factory: pytest.TempPathFactory,
    state_store: PgState | None,
) -> Iterator[World]:
    slack = FakeSlack()
    directory = tmp_path_factory.mktemp("slack-reminders")
    config = deployment.write_files(directory, state=state_store)
    policy = directory / "policy.yaml"
    policy.write_text(policy.read_text() + POLICY.replace("API_URL", slack.api_url))
    clock = FakeClock(SYSTEM_CLOCK.now())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PGWARDEN_TEST_SLACK_TOKEN", "xoxb-test-token")
        env.setenv("PGWARDEN_TEST_SLACK_SECRET", "not-used-here")
        try:
            with running_pgwarden(config, clock) as instance:
                yield World(instance, slack, clock)
        finally:
            slack.close()


def test_the_requester_is_reminded_at_each_offset_once(world: World) -> None:
    status, created = world.api("POST", "/api/v1/requests", "alice", {
        "target": "orders", "access_level": "read-only", "duration": "30m", "reason": "remind",
    })  # fmt: skip
    assert status == 201, created
    request_id = created["id"]
    status, approved = world.api("POST", f"/api/v1/requests/{request_id}/approve", "carol")
    assert status == 200, approved
    world.slack.wait_for("chat.postMessage", channel="DUALICE")  # the approval's DM
    reminders = world.pgwarden.runtime.duties.reminders
    assert reminders is not None
    assert reminders.sweep() == 0  # 30 minutes left: nothing due
    assert world.reminders() == []

    world.clock.advance(timedelta(minutes=25, seconds=1))  # 4m59s left
    (five,) = world.wait_reminders(1)
    assert request_id in five
    assert "ends in 5m" in five
    assert "orders" in five
    assert reminders.sweep() == 0  # written already: this leader takes no write lock for it
    reminders._written.clear()  # as a new leader after a failover: it writes it again ...
    assert reminders.sweep() == 1  # ... and the store keeps the first (ids are unique): not sent

    world.clock.advance(timedelta(minutes=4))  # 59s left
    reminders.sweep()  # the 1-minute reminder, written by this sweep or by the loop's
    sent = world.wait_reminders(2)
    assert sent[0] == five
    assert "ends in 1m" in sent[1]
    world.clock.advance(timedelta(seconds=30))
    assert reminders.sweep() == 0  # nothing new is due
    world.slack.wait_for("chat.postMessage", channel="DUALICE", count=3)  # approval + 2 reminders
    time.sleep(0.3)  # let a wrongly repeated send show up (not a timing assertion)
    assert len(world.reminders()) == 2


def test_notifications_given_up_are_a_readiness_note_not_a_problem(world: World) -> None:
    def readyz() -> tuple[int, Any]:
        port = world.pgwarden.runtime.api.port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", "/readyz")
            reply = conn.getresponse()
            return reply.status, json.loads(reply.read())
        finally:
            conn.close()

    assert readyz() == (200, {"status": "ready"})
    with world.pgwarden.store.write() as tx:  # a webhook since taken out of the policy
        tx.add_notification("gone-1", "webhook:gone", "request_created", "{}", world.clock.now())
    world.pgwarden.runtime.duties.outbox.committed([])  # the deliverer looks now
    deadline = time.monotonic() + SETTLE
    status, body = readyz()
    while "notes" not in body and time.monotonic() < deadline:
        time.sleep(0.05)
        status, body = readyz()
    assert status == 200
    assert body["status"] == "ready"
    (note,) = body["notes"]
    assert note.startswith("notifications (Slack, webhooks) are failing: 1 given up in the last")
