"""Webhooks: delivered from the API's actions, through the outbox, to a local receiver; retried
(Retry-After honoured), counted when given up; and the policy's `notifications:` section,
validated strictly."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from proxy.api.views import request_view
from proxy.grants.requests import RequestId
from proxy.notify.events import slack_escape
from proxy.notify.webhooks import MAX_RETRY_AFTER, RetryPolicy, retry_after
from proxy.policy.models import EventKind, SecretRef, WebhookFormat
from proxy.policy.policy_file import PolicyError, parse_policy
from tests.fixtures.api import (
    FAST_RETRY,
    ApiHarness,
    PolicyBox,
    Receiver,
    api,
    policy,
    receiver,
    webhook,
    with_webhooks,
)
from tests.fixtures.clock import FakeClock
from tests.fixtures.policy_samples import VALID

__all__ = ["api", "policy", "receiver"]  # the API harness's fixtures, for this module's tests


def _failures(api: ApiHarness, kind: EventKind) -> float:
    value = api.metrics.get_sample_value(
        "pgwarden_notification_failures_total", {"event": kind.value}
    )
    return value or 0.0


def test_the_request_story_reaches_a_generic_webhook(
    api: ApiHarness, policy: PolicyBox, receiver: Receiver
) -> None:
    with_webhooks(policy, webhook(receiver.url))
    request_id = api.create(reason="incident 42").body["id"]
    api.act("carol", request_id, "approve", {"comment": "go"})
    api.act("carol", request_id, "revoke", {"reason": "done"})
    denied = api.create().body["id"]
    api.act("dave", denied, "deny", {"reason": "not now"})
    posts = receiver.wait_for(5)
    kinds = sorted(p["event"] for p in posts)
    assert kinds == sorted(["request_created", "request_approved", "request_revoked",
                            "request_created", "request_denied"])  # fmt: skip
    created = next(p for p in posts if p["event"] == "request_created")
    assert created["actor"] == "alice"
    assert created["at"] == "2026-01-05T09:00:00Z"
    assert created["request"]["reason"] == "incident 42"
    assert f"pgwarden approve {created['request']['id']}" in created["message"]
    approved = next(p for p in posts if p["event"] == "request_approved")
    assert approved["request"]["state"] == "active"
    assert "active until 09:30:00 UTC" in approved["message"]
    headers = receiver.posts[0][0]
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("pgwarden/")
    ids = [post["id"] for post in posts]
    assert len(set(ids)) == 5  # one id per event, the key a receiver deduplicates on
    assert [h["idempotency-key"] for h, _ in receiver.posts[:5]] == ids
    assert api.deliverer.failures == 0


def test_a_slack_webhook_gets_text_with_its_control_characters_escaped(
    api: ApiHarness, policy: PolicyBox, receiver: Receiver
) -> None:
    with_webhooks(policy, webhook(receiver.url, WebhookFormat.SLACK, EventKind.REQUEST_CREATED))
    api.create(reason="see <!channel> & <https://evil|click>")
    (post,) = receiver.wait_for(1)
    assert set(post) == {"text"}
    assert "&lt;!channel&gt; &amp; &lt;https://evil|click&gt;" in post["text"]
    assert "<!channel>" not in post["text"]
    assert post["text"].startswith("alice asks for read-only on orders for 30m")


def test_only_subscribed_events_are_sent(
    api: ApiHarness, policy: PolicyBox, receiver: Receiver
) -> None:
    with_webhooks(policy, webhook(receiver.url, WebhookFormat.GENERIC, EventKind.REQUEST_DENIED))
    request_id = api.create().body["id"]
    api.act("carol", request_id, "deny", {"reason": "no"})
    (post,) = receiver.wait_for(1)
    assert post["event"] == "request_denied"
    api.run(api.deliverer.drain(2))
    assert len(receiver.posts) == 1


def test_a_killed_session_is_announced(
    api: ApiHarness, policy: PolicyBox, receiver: Receiver
) -> None:
    with_webhooks(policy, webhook(receiver.url))
    api.add_session("alice", session_id="a1")
    api.call("DELETE", "/api/v1/sessions/a1", {"reason": "runaway"}, user="carol")
    (post,) = receiver.wait_for(1)
    assert post["event"] == "session_killed"
    assert post["session"]["id"] == "a1"
    assert post["reason"] == "runaway"
    assert post["message"] == 'carol ended alice\'s session a1 on orders (read-only): "runaway"'


def test_a_500_is_retried_until_it_is_delivered(api: ApiHarness, policy: PolicyBox) -> None:
    flaky = Receiver(statuses=(500, 503))
    try:
        with_webhooks(policy, webhook(flaky.url, WebhookFormat.GENERIC, EventKind.REQUEST_CREATED))
        api.create()
        posts = flaky.wait_for(3)
        assert [p["event"] for p in posts] == ["request_created"] * 3
        api.run(api.deliverer.drain(2))
        assert api.deliverer.failures == 0
    finally:
        flaky.close()


def test_a_delivery_that_keeps_failing_is_given_up_and_counted(
    api: ApiHarness, policy: PolicyBox
) -> None:
    broken = Receiver(statuses=(500,) * 10)
    try:
        with_webhooks(policy, webhook(broken.url, WebhookFormat.GENERIC, EventKind.REQUEST_CREATED))
        api.create()
        broken.wait_for(FAST_RETRY.attempts)
        api.run(api.deliverer.drain(5))
        assert len(broken.posts) == FAST_RETRY.attempts  # bounded
        assert api.deliverer.failures == 1
        assert _failures(api, EventKind.REQUEST_CREATED) == 1
    finally:
        broken.close()


def test_a_client_error_is_not_retried(api: ApiHarness, policy: PolicyBox) -> None:
    gone = Receiver(statuses=(404,))
    try:
        with_webhooks(policy, webhook(gone.url, WebhookFormat.GENERIC, EventKind.REQUEST_CREATED))
        api.create()
        gone.wait_for(1)
        api.run(api.deliverer.drain(5))
        assert len(gone.posts) == 1
        assert _failures(api, EventKind.REQUEST_CREATED) == 1
    finally:
        gone.close()


class HeldRetries:
    """The deliverer's `sleep`: records each retry delay and holds every retry until released."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.waiting = threading.Event()  # a delivery is waiting to retry
        self._released = threading.Event()

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)
        self.waiting.set()
        while not self._released.is_set():
            await asyncio.sleep(0.001)

    def release(self) -> None:
        self._released.set()


def test_an_unreachable_receiver_never_delays_the_api(
    tmp_path: Path, policy: PolicyBox, clock: FakeClock
) -> None:
    # A port nobody listens on: every attempt is a connection error, retried in the background.
    retry = RetryPolicy(attempts=3, first_delay=0.5, max_delay=0.5, timeout=1.0)
    held = HeldRetries()
    api = ApiHarness(tmp_path, policy, clock, retry=retry, sleep=held.sleep)
    try:
        with_webhooks(policy, webhook("http://127.0.0.1:9/hook"))
        reply = api.create()
        assert reply.status == 201  # answered though the delivery cannot go on until released
        assert held.waiting.wait(10)  # the first attempt failed; the retry waits
        assert api.deliverer.failures == 0
        held.release()
        api.run(api.deliverer.drain(10), timeout=15)
        assert api.deliverer.failures == 1
        assert held.delays == [0.5, 0.5]  # attempts - 1 waits, as the policy says
    finally:
        api.close()


def test_retry_after_is_honoured_when_longer_than_the_backoff(
    tmp_path: Path, policy: PolicyBox, clock: FakeClock
) -> None:
    held = HeldRetries()
    held.release()  # record the waits, hold nothing
    api = ApiHarness(tmp_path, policy, clock, retry=RetryPolicy(), sleep=held.sleep)
    busy = Receiver(statuses=(429, 503, 503), headers={"Retry-After": "7"})
    try:
        with_webhooks(policy, webhook(busy.url, WebhookFormat.GENERIC, EventKind.REQUEST_CREATED))
        api.create()
        posts = busy.wait_for(4)
        assert len({post["id"] for post in posts}) == 1  # one event, tried four times
        api.run(api.deliverer.drain(5))
        # The backoff would be 1, 2 and 4 s; the receiver asked for 7 each time.
        assert held.delays == [7.0, 7.0, 7.0]
        assert api.deliverer.failures == 0
        (row,) = _rows(api)
        assert row[:2] == (4, None)  # attempts, last_error: delivered at the fourth
    finally:
        busy.close()
        api.close()


def test_a_retry_after_as_a_date_or_out_of_range_is_read_sensibly() -> None:
    now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert retry_after("120", now) == 120.0
    assert retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now) == 0.0
    assert retry_after("86400", now) == MAX_RETRY_AFTER  # a day: capped
    assert retry_after("soon", now) is None
    assert retry_after(None, now) is None


def _rows(api: ApiHarness) -> list[tuple[object, ...]]:
    """(attempts, last_error, delivered, gave up) of every outbox row, oldest first."""
    with contextlib.closing(sqlite3.connect(api.store.path)) as conn:
        return conn.execute(
            "SELECT attempts, last_error, delivered_us IS NOT NULL, gave_up_us IS NOT NULL "
            "FROM notifications ORDER BY id"
        ).fetchall()


def test_a_url_from_the_environment_is_used_and_checked(
    api: ApiHarness, policy: PolicyBox, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = replace(webhook("http://unused"), url=None, url_secret=SecretRef(env="HOOK_URL"))
    with_webhooks(policy, hidden)
    monkeypatch.setenv("HOOK_URL", receiver.url)
    api.create()
    assert receiver.wait_for(1)[0]["event"] == "request_created"
    monkeypatch.setenv("HOOK_URL", "ftp://hooks.example.com/T0/secret-part")
    api.create()
    api.run(api.deliverer.drain(5))
    assert _failures(api, EventKind.REQUEST_CREATED) == 1
    stored = str(_rows(api)[-1][1])
    assert stored.startswith("the URL in env HOOK_URL is not a usable http:// or https:// URL")
    assert "secret-part" not in stored  # the state store never holds a webhook URL


def test_an_expiry_and_a_lapse_found_by_the_sweep_are_announced(
    api: ApiHarness, policy: PolicyBox, receiver: Receiver, clock: FakeClock
) -> None:
    with_webhooks(policy, webhook(receiver.url))
    active = api.active_request()
    pending = api.create(user="bob").body["id"]
    receiver.wait_for(3)
    clock.advance(timedelta(hours=2))  # past the grant's 30 minutes and the 1 h pending timeout
    api.grants.sweep()
    posts = receiver.wait_for(5)[3:]
    by_kind = {post["event"]: post for post in posts}
    expired = api.grants.get(RequestId(active))
    assert by_kind["grant_expired"]["request"] == request_view(expired)
    assert by_kind["grant_expired"]["message"] == (
        f"alice's read-only on orders for 30m expired at 09:30:00 UTC (request {active})"
    )
    assert by_kind["request_lapsed"]["message"] == (
        f"bob's request {pending} for read-only on orders for 30m lapsed: no decision within "
        "1:00:00"
    )


def test_backoff_doubles_up_to_its_cap() -> None:
    retry = RetryPolicy(attempts=6, first_delay=1.0, max_delay=5.0)
    assert [retry.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_slack_escaping_covers_its_three_characters() -> None:
    assert slack_escape("a < b & c > d") == "a &lt; b &amp; c &gt; d"


# --- the policy section ------------------------------------------------------------------------

HOOKS = """
notifications:
  webhooks:
    - {url: "https://hooks.example.com/pgwarden", format: slack, events: [request_created]}
    - {url_env: SLACK_URL}
"""


def test_webhooks_are_read_from_the_policy() -> None:
    policy = parse_policy(VALID + HOOKS)
    first, second = policy.notifications.webhooks
    assert (first.url, first.format, first.events) == (
        "https://hooks.example.com/pgwarden", WebhookFormat.SLACK,
        frozenset({EventKind.REQUEST_CREATED}),
    )  # fmt: skip
    assert (second.url, second.format, second.events) == (None, WebhookFormat.GENERIC,
                                                          frozenset(EventKind))  # fmt: skip
    assert second.url_secret is not None
    assert second.describe() == "env SLACK_URL"
    assert parse_policy(VALID).notifications.webhooks == ()


@pytest.mark.parametrize(
    ("hook", "wanted"),
    [
        ("{url: 'ftp://example.com/x'}", "must be an http:// or https:// URL"),
        ("{url: 'file:///etc/passwd'}", "must be an http:// or https:// URL"),
        ("{url: 'https://user:pw@example.com/x'}", "must not contain user:password"),
        ("{url: 'https:///nohost'}", "has no host"),
        ("{url: 'http://example.com:99999/'}", "is not a valid URL"),
        ("{url: 'http://exa mple.com/'}", "without spaces"),
        ("{format: generic}", "needs exactly one of url: URL or url_env"),
        ("{url: 'http://a/', url_env: X}", "needs exactly one of url"),
        ("{url: 'http://a/', format: teams}", "must be one of generic, slack"),
        ("{url: 'http://a/', events: [request_exploded]}", "unknown event 'request_exploded'"),
        ("{url: 'http://a/', events: []}", "names no events"),
        ("{url: 'http://a/', secret: x}", "unknown key"),
        ("{url_env: 'not a var'}", "must be the name of an environment variable"),
    ],
)
def test_a_bad_webhook_is_rejected_with_its_path(hook: str, wanted: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(VALID + f"notifications:\n  webhooks:\n    - {hook}\n")
    lines = [str(problem) for problem in caught.value.problems]
    assert any(wanted in line and "notifications.webhooks[0]" in line for line in lines), lines


def test_an_unknown_key_in_notifications_is_rejected() -> None:
    with pytest.raises(PolicyError, match=r"notifications.webhook: unknown key \(did you mean"):
        parse_policy(VALID + "notifications: {webhook: https://example.com}\n")
