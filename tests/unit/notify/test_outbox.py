"""The outbox: a notification row exists if and only if the change it announces committed, one
per webhook that wants the event; rows outlive the process; the deliverer marks them.

These run on SQLite here and on PostgreSQL in tests/integration/cluster_leader (its conftest
opens the stores there)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta

import pytest

from proxy.grants.lifecycle import GrantService, NotAudited
from proxy.grants.requests import Transition
from proxy.grants.store import Store, StoreTx
from proxy.notify.deliverer import RETENTION, Deliverer
from proxy.notify.outbox import Outbox
from proxy.notify.webhooks import RetryPolicy, destination
from proxy.policy.models import EventKind, Notifications, Webhook, WebhookFormat
from tests.fixtures.api import Receiver
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import (
    ALICE,
    BOB,
    DAVE,
    PolicyBox,
    StoreFactory,
    break_the_commit,
    new_request,
)

QUICK = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.02, timeout=5.0)
Extra = Callable[[StoreTx], None]


def hooked(
    store_factory: StoreFactory, clock: FakeClock, policy: PolicyBox, then: Extra | None = None
) -> tuple[GrantService, Outbox, Store]:
    """A service whose store runs the outbox's hook before each COMMIT, then `then` (the audit
    log's hook in the runtime comes first; here `then` plays a later failure)."""
    boxes: list[Outbox] = []

    def before(tx: StoreTx, transitions: list[Transition]) -> None:
        boxes[0].before_commit(tx, transitions)
        if then is not None:
            then(tx)

    store = store_factory(before_commit=before)
    boxes.append(Outbox(store, policy, clock))
    return GrantService(store, clock, policy), boxes[0], store


def with_hooks(policy: PolicyBox, *hooks: Webhook) -> None:
    policy.current = replace(policy.current, notifications=Notifications(hooks))


def hook(url: str = "http://127.0.0.1:9/a", *kinds: EventKind) -> Webhook:
    return Webhook(url, None, WebhookFormat.GENERIC, frozenset(kinds or EventKind))


def kinds(store: Store, clock: FakeClock) -> list[tuple[str, str]]:
    with store.read() as tx:
        return [(r.kind, r.destination) for r in tx.due_notifications(clock.now(), 100)]


def test_each_change_writes_its_event_once_per_webhook_that_wants_it(
    store_factory: StoreFactory, clock: FakeClock, policy: PolicyBox
) -> None:
    everything, denials = hook("http://127.0.0.1:9/a"), hook("http://127.0.0.1:9/b")
    denials = replace(denials, events=frozenset({EventKind.REQUEST_DENIED}))
    with_hooks(policy, everything, everything, denials)  # listed twice: one row still
    service, _, store = hooked(store_factory, clock, policy)
    request = new_request(service)
    service.approve(request.id, BOB)
    service.approve(request.id, DAVE)  # the quorum: activates, one event says both
    service.deny(new_request(service).id, BOB, "not now")
    a, b = destination(everything), destination(denials)
    assert kinds(store, clock) == [
        ("request_created", a), ("request_approved", a), ("request_approved", a),
        ("request_created", a), ("request_denied", a), ("request_denied", b),
    ]  # fmt: skip
    with store.read() as tx:
        rows = tx.due_notifications(clock.now(), 100)
    documents = [json.loads(row.body) for row in rows]
    assert documents[2]["request"]["state"] == "active"
    assert documents[2]["message"].startswith(f"dave approved alice's request {request.id}")
    assert documents[4]["id"] == documents[5]["id"] == rows[4].event_id  # one event, two rows
    assert "http" not in rows[0].destination  # never the URL, which may be a secret


def test_a_commit_that_fails_leaves_no_notification(
    store_factory: StoreFactory, clock: FakeClock, policy: PolicyBox
) -> None:
    with_hooks(policy, hook())
    service, _, store = hooked(store_factory, clock, policy, then=break_the_commit)
    with pytest.raises(Exception):  # noqa: B017, PT011 - SQLite's or psycopg's integrity error
        new_request(service)
    assert kinds(store, clock) == []
    with store.read() as tx:
        assert tx.undelivered_notifications() == 0


def test_a_refused_audit_record_leaves_no_notification(
    store_factory: StoreFactory, clock: FakeClock, policy: PolicyBox
) -> None:
    def refuse(tx: StoreTx) -> None:
        raise NotAudited("the audit log cannot be written")

    with_hooks(policy, hook())
    service, _, store = hooked(store_factory, clock, policy, then=refuse)
    with pytest.raises(NotAudited):
        new_request(service)
    assert kinds(store, clock) == []


def test_without_webhooks_nothing_is_written(
    store_factory: StoreFactory, clock: FakeClock, policy: PolicyBox
) -> None:
    service, _, store = hooked(store_factory, clock, policy)
    new_request(service)
    assert kinds(store, clock) == []


def test_rows_outlive_the_store_and_a_new_deliverer_sends_them_once(
    store_factory: StoreFactory, clock: FakeClock, policy: PolicyBox
) -> None:
    receiver = Receiver(statuses=(500,))
    try:
        with_hooks(policy, hook(receiver.url))
        service, _, store = hooked(store_factory, clock, policy)
        created = new_request(service)
        service.deny(created.id, BOB, "not now")
        store.close()  # the process that wrote them is gone; nothing was sent
        assert receiver.posts == []
        reopened = store_factory()
        delivered = asyncio.run(_deliver(reopened, clock, policy))
        assert delivered == 2
        posts = receiver.wait_for(3)
        assert [p["event"] for p in posts] == ["request_created"] * 2 + ["request_denied"]
        assert posts[0]["id"] == posts[1]["id"]  # a 500, then the same event again
        with reopened.read() as tx:
            assert tx.undelivered_notifications() == 0
            assert tx.due_notifications(clock.now(), 10) == ()
        clock.advance(RETENTION + timedelta(seconds=1))
        with reopened.write() as tx:
            assert tx.prune_notifications(clock.now() - RETENTION) == 2
    finally:
        receiver.close()


async def _deliver(store: Store, clock: FakeClock, policy: PolicyBox) -> int:
    with ThreadPoolExecutor(1) as executor:
        deliverer = Deliverer(store, policy, clock, lambda: True, executor, retry=QUICK)
        await deliverer.drain(10)
        await deliverer.close()
        return deliverer.delivered


def test_a_deliverer_that_does_not_lead_sends_nothing(
    store_factory: StoreFactory, clock: FakeClock, policy: PolicyBox
) -> None:
    receiver = Receiver()
    try:
        with_hooks(policy, hook(receiver.url))
        service, _, store = hooked(store_factory, clock, policy)
        new_request(service, requester=ALICE)

        async def follower() -> int:
            with ThreadPoolExecutor(1) as executor:
                deliverer = Deliverer(store, policy, clock, lambda: False, executor)
                due = await deliverer.round()
                await deliverer.close()
                return due

        assert asyncio.run(follower()) == 0
        assert receiver.posts == []
        with store.read() as tx:
            assert tx.undelivered_notifications() == 1
    finally:
        receiver.close()
