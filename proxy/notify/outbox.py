"""The outbox: events written to the state store in the transaction of the change they announce.

`Outbox.before_commit` is the store's write-ahead hook (beside the audit log's, `serve.py`):
inside the write transaction, before its COMMIT, it turns the transaction's transitions into
events (`events.transition_events`) and writes one row per event and webhook that wants it. So a
row exists if and only if the change committed: a rollback takes the row with it, and a crash
after the COMMIT loses nothing. A session kill changes no stored state: `session_killed` writes
its row in a transaction of its own, after the session was ended.

Rows are sent later by the leader's `Deliverer`; writing them never waits on a webhook. An event
that cannot be built (a bug) is logged and counted, never a reason to refuse the change; a row
that cannot be written fails the transaction like any other write (the store is failing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter

from proxy.clock import Clock
from proxy.grants.requests import Transition
from proxy.grants.store import StateStoreUnavailable, Store, StoreError, StoreTx
from proxy.notify.events import Event, session_killed, transition_events
from proxy.notify.slack_sender import slack_destinations
from proxy.notify.webhooks import destination
from proxy.policy.models import Policy
from proxy.session.session import SessionInfo

log = logging.getLogger(__name__)


class Outbox:
    """Writes events to the store for the policy's webhooks and Slack app; `wake` tells the
    deliverer."""

    def __init__(
        self,
        store: Store,
        policy: Callable[[], Policy],
        clock: Clock,
        *,
        wake: Callable[[], None] = lambda: None,
        failures: Counter | None = None,
    ) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock
        self._wake = wake
        self._failures = failures

    def before_commit(self, tx: StoreTx, transitions: list[Transition]) -> None:
        """In the write transaction: rows for the events its transitions announce."""
        policy = self._policy()
        if not policy.notifications.webhooks and policy.notifications.slack is None:
            return
        try:
            events = transition_events(tx, transitions, policy)
        except Exception:  # a bug here must not refuse an approval: say so, count it
            log.exception("notifications for %d transitions not built", len(transitions))
            self._count_failure("unknown")
            return
        for event in events:
            self.enqueue(tx, event, policy)

    def committed(self, transitions: list[Transition]) -> None:
        """After a COMMIT: its rows are there to send now."""
        self._wake()

    def enqueue(self, tx: StoreTx, event: Event, policy: Policy) -> int:
        """Write `event` once for each webhook that wants it; how many rows."""
        document, written = event.document(), set()
        for hook in policy.notifications.webhooks:
            name = destination(hook)
            if event.kind in hook.events and name not in written:
                tx.add_notification(event.id, name, event.kind.value, document, event.at)
                written.add(name)
        for name in slack_destinations(event, policy):  # the Slack app's rows (slack_sender.py)
            tx.add_notification(event.id, name, event.kind.value, document, event.at)
            written.add(name)
        return len(written)

    def session_killed(self, info: SessionInfo, actor: str, reason: str) -> None:
        """A session was ended by `actor`: its row, in a transaction of its own (blocking; the
        API calls it in a thread). A store that refuses it is logged and counted: the session
        is gone whatever the notification's fate."""
        policy = self._policy()
        event = session_killed(info, actor, reason, self._clock.now())
        try:
            with self._store.write() as tx:
                written = self.enqueue(tx, event, policy)
        except (StateStoreUnavailable, StoreError) as exc:
            log.error("notification %s not written: %s", event.kind, exc)
            self._count_failure(event.kind.value)
            return
        if written:
            self._wake()

    def _count_failure(self, kind: str) -> None:
        if self._failures is not None:
            self._failures.labels(kind).inc()
