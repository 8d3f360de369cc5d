"""The deliverer: sends the outbox's rows to their webhooks and Slack, on the leader only.

Each round (woken when a local commit wrote rows, else once a second) it reads the rows that are
due, oldest first, and gives each destination one task that sends that destination's rows one
at a time, in order. One at a time per destination bounds the duplicates a crash can cause: a
leader that dies after a POST succeeded and before it marked the row leaves that one row, which
the next leader sends again (with the same `Idempotency-Key`); no other.

An attempt that fails is recorded on its row before the next (attempts, `last_error`, and when
to try again: the backoff, or what `Retry-After` asked for if longer), then retried in the same
task after that wait; after `RetryPolicy.attempts` tries, or a final answer (4xx), the row is
given up: logged without its URL, counted (`pgwarden_notification_failures_total{event}`) and
kept with its error. So a restart or a failover resumes each row where it was. Before every
attempt the task checks that this process still leads; once it does not, it stops and leaves the
rows to the new leader. Delivery never runs on a request's or an approval's path.

The leader also publishes `pgwarden_notifications_undelivered` and forgets, once an hour, rows
delivered or given up more than `RETENTION` ago.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from datetime import datetime, timedelta
from functools import partial
from typing import Final, TypeVar

from prometheus_client import Counter, Gauge

from proxy.clock import Clock
from proxy.grants.store import StateStoreUnavailable, Store
from proxy.grants.store_schema import Notification
from proxy.notify.events import render
from proxy.notify.slack_sender import SlackSender, is_slack
from proxy.notify.webhooks import Attempt, RetryPolicy, WebhookClient, find, resolve
from proxy.policy.models import Policy

log = logging.getLogger(__name__)
T = TypeVar("T")

POLL_INTERVAL: Final = 1.0  # seconds: how soon rows another replica wrote are seen
MAX_BATCH: Final = 200  # rows read per round; the rest come in the next rounds
RETENTION: Final = timedelta(days=7)  # delivered and given-up rows kept for a look, then pruned
PRUNE_EVERY: Final = timedelta(hours=1)
DEFAULT_RETRY: Final = RetryPolicy()


class Deliverer:
    """Sends due outbox rows while `leading()` (see the module docstring).

    `sleep` waits out the delay before a retry (a test passes one it holds and releases);
    store calls run on `executor`, never on the event loop."""

    def __init__(
        self,
        store: Store,
        policy: Callable[[], Policy],
        clock: Clock,
        leading: Callable[[], bool],
        executor: Executor,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        failures: Counter | None = None,
        undelivered: Gauge | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        poll_interval: float = POLL_INTERVAL,
        slack: SlackSender | None = None,
    ) -> None:
        self._store, self._policy, self._clock = store, policy, clock
        self._leading, self._executor = leading, executor
        self.retry = retry
        self._failures_metric, self._undelivered = failures, undelivered
        self._sleep, self._poll_interval = sleep, poll_interval
        self._client = WebhookClient(clock, retry.timeout)
        self._slack = slack  # sends the `slack:*` rows (slack_sender.py)
        self._busy: dict[str, asyncio.Task[None]] = {}  # destination -> its sending task
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._pruned_at: datetime | None = None
        self.failures = 0  # rows given up by this deliverer
        self.delivered = 0

    def wake(self) -> None:
        """Look for rows now rather than at the next poll; from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wakeup.set)

    async def run(self) -> None:
        """Rounds until cancelled; a failing round is logged and tried again at the next."""
        self._loop = asyncio.get_running_loop()
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that comes
            # as the event is set, and the task would never end (bpo-42130).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await self.round()
            except StateStoreUnavailable as exc:  # the store logged it when it began
                log.debug("notifications wait for the state store: %s", exc)
            except Exception:
                log.exception("notification round failed; retrying in %.0f s", self._poll_interval)

    async def round(self) -> int:
        """Start sending what is due (if leading); how many rows were due."""
        self._loop = asyncio.get_running_loop()
        if not self._leading():
            return 0
        rows, waiting = await self._blocking(self._due)
        if self._undelivered is not None:
            self._undelivered.set(waiting)
        by_destination: dict[str, list[Notification]] = {}
        for row in rows:
            by_destination.setdefault(row.destination, []).append(row)
        for name, queue in by_destination.items():
            if name not in self._busy:
                task = asyncio.get_running_loop().create_task(self._send_all(name, queue))
                self._busy[name] = task
        await self._prune()
        return len(rows)

    async def drain(self, timeout: float) -> None:
        """Send what is due now, and wait for it, up to `timeout` s (tests; shutdown)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while await self.round() or self._busy:
                    if self._busy:
                        await asyncio.wait(list(self._busy.values()))

    async def close(self, grace: float = 2.0) -> None:
        """Give sends in flight `grace` seconds, cancel the rest, close the HTTP client."""
        if self._busy:
            await asyncio.wait(list(self._busy.values()), timeout=grace)
        for task in list(self._busy.values()):
            task.cancel()
        if self._busy:
            await asyncio.wait(list(self._busy.values()))
        await self._client.close()

    def _due(self) -> tuple[tuple[Notification, ...], int]:
        with self._store.read() as tx:
            due = tx.due_notifications(self._clock.now(), MAX_BATCH)
            return due, tx.undelivered_notifications()

    async def _send_all(self, name: str, rows: list[Notification]) -> None:
        try:
            for row in rows:
                if not self._leading():
                    return  # the new leader has them
                await self._deliver(row)
        except StateStoreUnavailable as exc:
            log.debug("notifications to %s wait for the state store: %s", name, exc)
        except Exception:
            log.exception("notifications to %s failed; retrying in the next round", name)
        finally:
            del self._busy[name]
            self._wakeup.set()  # rows that came meanwhile

    async def _deliver(self, row: Notification) -> None:
        if self._slack is not None and is_slack(row.destination):
            name = row.destination
            send = partial(self._slack.send, row.destination, row.kind, row.body)
        else:
            found = find(self._policy(), row.destination)
            if found is None:
                await self._give_up(row, row.attempts, "its webhook is no longer in the policy", "")
                return
            index, hook = found
            name = f"webhook #{index + 1} ({hook.describe()})"
            try:
                url = resolve(hook)
            except ValueError as exc:
                await self._give_up(row, row.attempts, str(exc), name)
                return
            send = partial(self._client.post, url, render(row.body, hook.format), row.event_id)
        attempts, why = row.attempts, row.last_error or "no attempts left"
        while attempts < self.retry.attempts:
            if not self._leading():
                return
            attempt = await send()
            attempts, why = attempts + 1, attempt.why
            if attempt.delivered:
                await self._blocking(self._marked, row, attempts)
                return
            if not attempt.retryable or attempts >= self.retry.attempts:
                break
            wait = self._wait(attempt, attempts)
            retry_at = self._clock.now() + timedelta(seconds=wait)
            await self._blocking(self._failed, row, attempts, why, retry_at, False)
            log.info("notification %s to %s failed (%s); retrying in %.1f s",
                     row.kind, name, attempt.why, wait)  # fmt: skip
            await self._sleep(wait)
        await self._give_up(row, attempts, why, name)

    def _wait(self, attempt: Attempt, attempts: int) -> float:
        """The backoff, or longer if the receiver asked for longer."""
        return max(self.retry.delay(attempts), attempt.retry_after or 0.0)

    async def _give_up(self, row: Notification, attempts: int, why: str, name: str) -> None:
        await self._blocking(self._failed, row, attempts, why, self._clock.now(), True)
        log.error("notification %s (event %s) to %s failed for good: %s",
                  row.kind, row.event_id, name or row.destination, why)  # fmt: skip
        self.failures += 1
        if self._failures_metric is not None:
            self._failures_metric.labels(row.kind).inc()

    def _marked(self, row: Notification, attempts: int) -> None:
        with self._store.write() as tx:
            tx.notification_delivered(row.id, attempts, self._clock.now())
        self.delivered += 1

    def _failed(
        self, row: Notification, attempts: int, why: str, at: datetime, gave_up: bool
    ) -> None:
        with self._store.write() as tx:
            tx.notification_failed(row.id, attempts, why, at, gave_up)

    async def _prune(self) -> None:
        now = self._clock.now()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        await self._blocking(self._forget, now - RETENTION)

    def _forget(self, before: datetime) -> None:
        with self._store.write() as tx:
            forgotten = tx.prune_notifications(before)
        if forgotten:
            log.info("forgot %d notifications delivered or given up before %s", forgotten, before)

    async def _blocking(self, work: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, partial(work, *args)
        )
