"""Duties done once across replicas, and the notification outbox: the runtime's wiring of both.

`Duties` holds, for one process: the `Outbox` (every process writes its events, in the
transaction of the change they announce), and in the primary process the leadership
(`proxy/cluster/leader.py`: an advisory lock with a PostgreSQL store, always with SQLite) and
the `Deliverer`, which sends only while this process leads. Housekeeping asks `leading()`
before its sweep of lapses and expiries. A worker process writes events and leads nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from proxy.clock import Clock
from proxy.cluster.leader import AdvisoryLeader, Leadership, SoleLeader
from proxy.config import ServerConfig, StateBackend
from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import Transition
from proxy.grants.store import StateStoreUnavailable, Store, StoreError, StoreTx
from proxy.notify.deliverer import Deliverer
from proxy.notify.outbox import Outbox
from proxy.notify.slack_actions import SlackActions
from proxy.notify.slack_api import SlackApi
from proxy.notify.slack_reminders import due_reminders, remind
from proxy.notify.slack_sender import SlackSender
from proxy.policy.durations import format_duration
from proxy.policy.models import Policy
from proxy.runtime.metrics import Metrics
from proxy.runtime.startup import state_dsn

log = logging.getLogger(__name__)

NOTIFY_CLOSE_GRACE = 2.0  # seconds for sends in flight at shutdown
DELIVERY_LATE = timedelta(minutes=5)  # an undelivered row this old: Slack or a webhook is failing
GAVE_UP_WITHIN = timedelta(hours=1)  # rows given up this recently are noted in /readyz
REMIND_EVERY = 1.0  # seconds between the leader's looks for reminders due (as housekeeping's)
MAX_REMEMBERED = 10_000  # reminder ids a leader keeps, to take no write lock for them again


@dataclass(eq=False)
class Reminders:
    """The leader's sweep for reminders before grants end (`slack_reminders.py`), in the
    deliverer's store thread; what it writes is sent by the deliverer, once."""

    store: Store
    policy: Callable[[], Policy]
    clock: Clock
    offsets: tuple[timedelta, ...]
    leading: Callable[[], bool]
    executor: ThreadPoolExecutor
    wake: Callable[[], None]
    _written: set[str] = field(default_factory=set)  # reminders this leader wrote

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(REMIND_EVERY)
            if not self.leading():
                continue
            try:
                if await loop.run_in_executor(self.executor, self.sweep):
                    self.wake()
            except StateStoreUnavailable as exc:
                log.debug("reminders wait for the state store: %s", exc)
            except Exception:
                log.exception("looking for reminders failed; retrying in %.0f s", REMIND_EVERY)

    def sweep(self) -> int:
        """Write the reminders due now that this leader has not written yet; how many. A read
        first: the write lock is taken only when there is something to write (every second
        otherwise, on every replica's leader)."""
        policy, now = self.policy(), self.clock.now()
        if policy.notifications.slack is None or not self.offsets:
            return 0
        with self.store.read() as tx:
            due = {event_id for event_id, _, _ in due_reminders(tx, now, self.offsets)}
        if not due - self._written:
            return 0
        with self.store.write() as tx:
            written = remind(tx, now, self.offsets, policy, frozenset(self._written))
        self._written.update(written)
        if len(self._written) > MAX_REMEMBERED:  # ids are unique in the store anyway
            self._written.clear()
        return len(written)


@dataclass(frozen=True)
class DeliveryNote:
    """A `/readyz` note when notifications are not getting through: rows given up lately, or the
    oldest row still to send late. A note, never a problem: a failing Slack or webhook must not
    take the gateway out of service. Read from the shared store, so any replica tells it."""

    store: Store
    clock: Clock

    def __call__(self) -> str | None:
        now = self.clock.now()
        try:
            with self.store.read() as tx:
                oldest, gave_up = tx.notification_health(now - GAVE_UP_WITHIN)
        except (StateStoreUnavailable, StoreError):
            return None  # the store's own check says so: no second voice for one fault
        late = oldest is not None and now - oldest >= DELIVERY_LATE
        if not gave_up and not late:
            return None
        parts = [f"{gave_up} given up in the last hour"] if gave_up else []
        if late and oldest is not None:
            parts.append(f"the oldest unsent was written {format_duration(now - oldest)} ago")
        return (
            f"notifications (Slack, webhooks) are failing: {'; '.join(parts)}; see the log "
            "and pgwarden_notification_failures_total"
        )


@dataclass(eq=False)
class Duties:
    """The outbox of a process; the leadership and the deliverer of a primary (else None)."""

    outbox: Outbox
    leadership: Leadership | None
    deliverer: Deliverer | None
    _executor: ThreadPoolExecutor | None = None
    slack: SlackActions | None = None  # Slack's callbacks (the API's slack_routes.py)
    reminders: Reminders | None = None  # before grants end, by the leader
    delivery_note: Callable[[], str | None] = lambda: None  # for /readyz (DeliveryNote)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def leading(self) -> bool:
        return self.leadership is not None and self.leadership.leading

    def before_commit(self, tx: StoreTx, transitions: list[Transition]) -> None:
        self.outbox.before_commit(tx, transitions)

    def committed(self, transitions: list[Transition]) -> None:
        self.outbox.committed(transitions)

    def start(self) -> None:
        """Start leading (trying to) and delivering, on the running loop."""
        loop = asyncio.get_running_loop()
        if self.leadership is not None:
            self._tasks.append(loop.create_task(self.leadership.run()))
        if self.deliverer is not None:
            self._tasks.append(loop.create_task(self.deliverer.run()))
        if self.reminders is not None:
            self._tasks.append(loop.create_task(self.reminders.run()))

    async def stop(self) -> None:
        """Stop delivering (sends in flight get a grace), then leading (freeing the lock)."""
        if self.slack is not None:
            await self.slack.drain(NOTIFY_CLOSE_GRACE)
        for task in reversed(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.deliverer is not None:
            await self.deliverer.close(NOTIFY_CLOSE_GRACE)
        if self.leadership is not None:
            await self.leadership.close()
        if self._executor is not None:  # its store call ends before the store closes
            shutdown = functools.partial(self._executor.shutdown, wait=True)
            await asyncio.get_running_loop().run_in_executor(None, shutdown)


def build_duties(
    config: ServerConfig,
    store: Store,
    policy: Callable[[], Policy],
    clock: Clock,
    metrics: Metrics,
    *,
    primary: bool,
    grants: GrantService | None = None,
) -> Duties:
    """The outbox; with `primary`, the leadership this store calls for and the deliverer (and,
    given `grants`, what Slack's callbacks do)."""
    if not primary:
        outbox = Outbox(store, policy, clock, failures=metrics.notification_failures)
        return Duties(outbox, None, None, delivery_note=DeliveryNote(store, clock))

    def published(leading: bool) -> None:
        metrics.leader.set(1 if leading else 0)
        if not leading:
            metrics.notifications_undelivered.set(0)  # the leader publishes it

    leadership: Leadership
    if config.state.backend is StateBackend.POSTGRES:
        leadership = AdvisoryLeader(
            state_dsn(config.state), config.state.schema, clock.monotonic, on_change=published
        )
    else:
        leadership = SoleLeader(published)
    # One thread of its own: a delivery's store calls never queue behind housekeeping's.
    executor = ThreadPoolExecutor(1, thread_name_prefix="pgw-notify")
    slack_api = SlackApi(lambda: policy().notifications.slack, clock.now)
    deliverer = Deliverer(
        store, policy, clock, lambda: leadership.leading, executor,
        failures=metrics.notification_failures,
        undelivered=metrics.notifications_undelivered,
        slack=SlackSender(slack_api, store, policy, executor),
    )  # fmt: skip
    outbox = Outbox(
        store, policy, clock, wake=deliverer.wake, failures=metrics.notification_failures
    )
    slack = None
    if grants is not None:  # a click's lifecycle work: the API's kind of work, in its own thread
        clicks = ThreadPoolExecutor(1, thread_name_prefix="pgw-slack")
        slack = SlackActions(slack_api, grants, store, policy, clicks,
                             refusals=metrics.slack_refused)  # fmt: skip
    offsets = config.sessions.warn_before
    reminders = Reminders(store, policy, clock, offsets, lambda: leadership.leading, executor,
                          deliverer.wake)  # fmt: skip
    note = DeliveryNote(store, clock)
    return Duties(outbox, leadership, deliverer, executor, slack, reminders, delivery_note=note)
