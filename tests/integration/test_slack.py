"""Slack approvals through a real pgwarden (`Runtime`) in front of real Postgres, with the real
`slack_sdk` client talking to a local fake of Slack's Web API (tests/fixtures/slack.py), and
callbacks signed exactly as Slack signs them: a request's message with buttons, an approval by a
mapped approver, the message updated and the requester told, the credential working; and every
refusal (own request, unknown Slack user, bad, missing, old and replayed signatures); on each
state store (`[sqlite]`, `[postgres]`)."""

from __future__ import annotations

import http.client
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest

from proxy.api.auth import new_token
from proxy.clock import SYSTEM_CLOCK
from proxy.notify.webhooks import RetryPolicy
from proxy.policy.models import UserName
from tests.fixtures.pg_state import PgState
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.slack import FakeSlack, Person, click, signed
from tests.fixtures.state_backends import BOTH_STORES

pytestmark = [pytest.mark.integration, BOTH_STORES]

SECRET = secrets.token_hex(16)
SLACK_POLICY = """\
notifications:
  slack:
    bot_token_env: PGWARDEN_TEST_SLACK_TOKEN
    signing_secret_env: PGWARDEN_TEST_SLACK_SECRET
    channels: {{orders: C0ORDERS}}
    users: {{carol: UCAROL, alice: UALICE}}
    api_url: {api_url}
    console_url: http://127.0.0.1:8080
"""


@dataclass
class World:
    pgwarden: RunningPgwarden
    slack: FakeSlack

    def token(self, user: str) -> str:
        secret, record = new_token(UserName(user), SYSTEM_CLOCK.now())
        with self.pgwarden.store.write() as tx:
            tx.insert_token(record)
        return secret

    def http(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.pgwarden.runtime.api.port, timeout=30)
        try:
            conn.request(method, path, body, headers)
            reply = conn.getresponse()
            raw = reply.read()
            is_json = "json" in (reply.getheader("Content-Type") or "")
            return reply.status, json.loads(raw) if is_json else raw.decode()
        finally:
            conn.close()

    def api(self, method: str, path: str, user: str, body: object = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token(user)}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        data = None if body is None else json.dumps(body).encode()
        return self.http(method, path, data, headers)

    def callback(self, payload: dict[str, Any], **sign: Any) -> tuple[int, Any]:
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return self.http("POST", "/api/v1/slack/interactivity", body, signed(body, SECRET, **sign))

    def request(self, level: str = "read-only", user: str = "alice") -> str:
        status, created = self.api("POST", "/api/v1/requests", user, {
            "target": "orders", "access_level": level, "duration": "30m", "reason": "slack",
        })  # fmt: skip
        assert status == 201, created
        return str(created["id"])

    def posted(self, request_id: str) -> Any:
        """The request's message: the one chat.postMessage whose blocks name it."""
        found = [c for c in self.slack.wait_for("chat.postMessage", channel="C0ORDERS", count=1)
                 if request_id in json.dumps(c.params)]  # fmt: skip
        deadline = time.monotonic() + 10
        while not found and time.monotonic() < deadline:
            time.sleep(0.05)
            found = [c for c in self.slack.named("chat.postMessage", channel="C0ORDERS")
                     if request_id in json.dumps(c.params)]  # fmt: skip
        assert len(found) == 1, found
        return found[0]

    def state(self, request_id: str) -> str:
        status, shown = self.api("GET", f"/api/v1/requests/{request_id}", "carol")
        assert status == 200, shown
        return str(shown["state"])

    def refused(self, reason: str) -> float:
        _, text = self.http("GET", "/metrics", None, {})
        pattern = rf'pgwarden_slack_requests_refused_total{{reason="{reason}"}} ([0-9.]+)'
        found = re.search(pattern, text)
        return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def world(
    deployment: PgwardenDeployment,
    tmp_path_factory: pytest.TempPathFactory,
    state_store: PgState | None,
) -> Iterator[World]:
    slack = FakeSlack({"UCAROL": Person("carol@example.com"),
                       "UNOBODY": Person("nobody@example.com")})  # fmt: skip
    directory = tmp_path_factory.mktemp("slack")
    config = deployment.write_files(directory, state=state_store)
    policy = directory / "policy.yaml"
    text = policy.read_text().replace(
        "password_env: PGWARDEN_TEST_RW_PASSWORD}",
        "password_env: PGWARDEN_TEST_RW_PASSWORD, "
        "approval: {approvers: {groups: [dba]}, chat: link}}",
    )
    policy.write_text(text + SLACK_POLICY.format(api_url=slack.api_url))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PGWARDEN_TEST_SLACK_TOKEN", "xoxb-test-token")
        env.setenv("PGWARDEN_TEST_SLACK_SECRET", SECRET)
        try:
            with running_pgwarden(config) as instance:
                deliverer = instance.runtime.duties.deliverer
                assert deliverer is not None
                deliverer.retry = RetryPolicy(
                    attempts=8, first_delay=0.05, max_delay=0.2
                )  # no long waits
                yield World(instance, slack)
        finally:
            slack.close()


def _actions(call: Any) -> list[dict[str, Any]]:
    return [b for b in call.params["blocks"] if b["type"] == "actions"]


def test_approve_in_slack_updates_the_message_tells_the_requester_and_the_grant_works(
    world: World,
) -> None:
    request_id = world.request()
    posted = world.posted(request_id)
    assert posted.token == "xoxb-test-token"
    (buttons,) = _actions(posted)
    assert [e["action_id"] for e in buttons["elements"]] == ["approve", "deny"]
    assert {e["value"] for e in buttons["elements"]} == {request_id}
    assert "alice" in json.dumps(posted.params["blocks"])
    reply = world.slack.response_url("approve")
    status, _ = world.callback(click("approve", request_id, "UCAROL", reply, "1"))
    assert status == 200
    assert "You approved" in world.slack.wait_response(1)[-1]["text"]
    updated = world.slack.wait_for("chat.update", channel="C0ORDERS")
    assert any('"active"' in json.dumps(c.params) or "Approved" in json.dumps(c.params)
               for c in updated)  # fmt: skip
    assert not any(_actions(c) for c in updated if request_id in json.dumps(c.params))
    world.slack.wait_for("conversations.open", users="UALICE")
    (dm,) = world.slack.wait_for("chat.postMessage", channel="DUALICE")
    assert request_id in dm.params["text"]
    assert "approved" in dm.params["text"]

    status, credential = world.api("POST", f"/api/v1/requests/{request_id}/credentials", "alice")
    assert status == 201, credential
    with psycopg.connect(credential["dsn"], connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) > 0 FROM items").fetchone() == (True,)


def test_own_request_cannot_be_approved_from_slack(world: World) -> None:
    request_id = world.request()
    world.posted(request_id)
    before = len(world.slack.responses)
    own = click("approve", request_id, "UALICE", world.slack.response_url(), "1")
    assert world.callback(own)[0] == 200
    said = world.slack.wait_response(before + 1)[-1]
    assert said["text"].startswith("You cannot approve your own request")
    assert said["response_type"] == "ephemeral"
    assert world.state(request_id) == "pending"


def test_an_unknown_slack_user_is_told_and_nothing_changes(world: World) -> None:
    request_id = world.request()
    world.posted(request_id)
    before = len(world.slack.responses)
    for user in ("UNOBODY", "UNKNOWN1"):  # an email no person has; no such Slack user
        payload = click("approve", request_id, user, world.slack.response_url(), "1")
        assert world.callback(payload)[0] == 200
        said = world.slack.wait_response(before + 1)[-1]
        before += 1
        assert said["text"].startswith("You are not known to pgwarden")
    assert world.state(request_id) == "pending"


def test_deny_opens_a_modal_and_its_reason_denies(world: World) -> None:
    request_id = world.request()
    world.posted(request_id)
    deny = click("deny", request_id, "UCAROL", world.slack.response_url(), "1")
    assert world.callback(deny)[0] == 200
    (opened,) = world.slack.wait_for("views.open", trigger_id="trigger-UCAROL")
    view = opened.params["view"]
    submission = {
        "type": "view_submission", "user": {"id": "UCAROL"},
        "view": {"callback_id": view["callback_id"], "private_metadata": view["private_metadata"],
                 "state": {"values": {"reason": {"reason": {"value": "not today"}}}}},
    }  # fmt: skip
    assert world.callback(submission)[0] == 200
    world.slack.wait_for("chat.postEphemeral", user="UCAROL")
    assert world.state(request_id) == "denied"
    dms = world.slack.wait_for("chat.postMessage", channel="DUALICE", count=2)
    assert any("denied by carol" in c.params["text"] and "not today" in c.params["text"]
               for c in dms)  # fmt: skip


def test_bad_missing_old_and_replayed_signatures_are_refused_and_counted(world: World) -> None:
    request_id = world.request()
    payload = click("approve", request_id, "UCAROL", world.slack.response_url(), "1")
    body = urlencode({"payload": json.dumps(payload)}).encode()
    path = "/api/v1/slack/interactivity"
    counts = {r: world.refused(r) for r in ("bad", "missing", "old", "replay")}
    forged = signed(body, "not-the-secret")
    assert world.http("POST", path, body, forged)[0] == 401
    assert world.http("POST", path, body, {"Content-Type": forged["Content-Type"]})[0] == 401
    assert world.callback(payload, ts=int(time.time()) - 600)[0] == 401
    headers = signed(body, SECRET)
    assert world.http("POST", path, body, headers)[0] == 200  # the genuine one, once
    assert world.http("POST", path, body, headers)[0] == 401  # the same again: a replay
    for reason, before in counts.items():
        assert world.refused(reason) == before + 1, reason


def test_a_link_level_shows_no_buttons(world: World) -> None:
    request_id = world.request("read-write")
    posted = world.posted(request_id)
    assert _actions(posted) == []
    text = json.dumps(posted.params["blocks"])
    assert "web console" in text
    assert f"http://127.0.0.1:8080/console/requests/{request_id}" in text


def test_slack_down_for_a_while_then_every_message_is_delivered_once(world: World) -> None:
    world.slack.fail((503, {}), (502, {}), (429, {"Retry-After": "1"}), (500, {}))
    request_id = world.request()
    posted = world.posted(request_id)  # after four failed attempts
    assert _actions(posted)
    time.sleep(0.3)  # let a wrongly repeated send show up (not a timing assertion)
    again = [c for c in world.slack.named("chat.postMessage", channel="C0ORDERS")
             if request_id in json.dumps(c.params)]  # fmt: skip
    assert len(again) == 1
    failed = [c.status for c in world.slack.calls if c.method == "chat.postMessage"
              and request_id in json.dumps(c.params) and c.status != 200]  # fmt: skip
    assert failed == [503, 502, 429, 500]  # each retried, the 429 after its Retry-After
