"""Housekeeping: the jobs a running pgwarden does once a second, each a small object of its own.

Every process checks the policy file for changes, publishes its audit log's health and its
upstream pool's counts, and looks at its state store (`StoreHealthWatch`). The primary also
sweeps the grants (lapses and expiry) and publishes the request and grant counts; a worker
instead sends its metrics to the primary. A failing job is logged and tried again at the next
tick; it never stops the others. A job the state store refuses is logged at DEBUG only: the
store logged the problem as an ERROR when it began.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest

from proxy.audit import AuditLog
from proxy.grants.lifecycle import GrantService, NotAudited
from proxy.grants.requests import RequestState
from proxy.grants.store import StateStoreUnavailable, Store
from proxy.grants.store_watch import Problem
from proxy.policy.models import Policy
from proxy.runtime.metrics import Metrics, policy_label
from proxy.upstream.pool import UpstreamPool
from proxy.workers.link import PrimaryLink

log = logging.getLogger(__name__)

Counts = tuple[tuple[str, str, str, int], ...]  # (state, target, level, count)
STORE_ERROR_KINDS: Final = tuple(problem.value for problem in Problem)


@dataclass(eq=False)
class AuditHealthWatch:
    """`pgwarden_audit_healthy` and the write errors counted since the last look."""

    audit: AuditLog
    metrics: Metrics
    _errors_seen: int = 0

    def __call__(self) -> None:
        self.metrics.audit_healthy.set(1 if self.audit.healthy else 0)
        errors = self.audit.write_errors - self._errors_seen
        if errors > 0:
            self.metrics.audit_write_errors.inc(errors)
            self._errors_seen += errors


@dataclass(eq=False)
class StoreHealthWatch:
    """The state store, looked at every tick whether or not anyone uses it: a deleted or
    replaced file is noticed (and logged, and /readyz fails) within a tick; while writes fail,
    one small write is retried, so the store recovers by itself once they work again (a
    PostgreSQL store makes a round trip every tick: an unreachable database is noticed, and
    found again, within one); then `pgwarden_state_store_healthy` and `_errors_total{kind}` are
    published. `check` blocks (run it in a store thread); `publish` runs on the loop."""

    store: Store
    metrics: Metrics
    _healthy: bool = True
    _seen: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STORE_ERROR_KINDS, 0))

    def check(self) -> None:
        self._healthy = self.store.check() is None

    def publish(self) -> None:
        self.metrics.state_store_healthy.set(1 if self._healthy else 0)
        errors = self.store.errors()
        for kind, seen in self._seen.items():  # every kind, so that each series starts at 0
            count = errors.get(Problem(kind), 0)
            self.metrics.state_store_errors.labels(kind).inc(count - seen)
            self._seen[kind] = count


@dataclass(eq=False)
class PoolWatch:
    """Ends idle backends past their time and publishes the pool's counts."""

    pool: UpstreamPool
    metrics: Metrics
    _reuses_seen: int = 0

    def __call__(self) -> None:
        self.pool.prune()
        self.metrics.upstream_pool_idle.set(self.pool.idle_count)
        self.metrics.upstream_pool_reuses.inc(self.pool.reused - self._reuses_seen)
        self._reuses_seen = self.pool.reused


@dataclass(eq=False)
class MetricsReport:
    """A worker's metrics and audit health, sent to the primary for /metrics and /readyz."""

    link: PrimaryLink
    registry: CollectorRegistry
    audit: AuditLog

    def __call__(self) -> None:
        text = generate_latest(self.registry).decode()
        self.link.notify("metrics", text=text, audit_healthy=self.audit.healthy)


@dataclass(eq=False)
class RequestCounts:
    """Requests by state, active grants by target and level (policy names only)."""

    store: Store
    policy: Callable[[], Policy]
    metrics: Metrics

    def read(self) -> Counts:
        with self.store.read() as tx:
            return tx.request_counts()

    def publish(self, counts: Counts) -> None:
        by_state: dict[str, int] = dict.fromkeys((s.value for s in RequestState), 0)
        active: dict[tuple[str, ...], int] = {}
        for state, target, level, count in counts:
            by_state[state] = by_state.get(state, 0) + count
            if state == RequestState.ACTIVE.value:
                labels = policy_label(self.policy(), target, level)
                active[labels] = active.get(labels, 0) + count
        for state, count in by_state.items():
            self.metrics.requests.labels(state).set(count)
        self.metrics.grants_active.clear()
        for labels, count in active.items():
            self.metrics.grants_active.labels(*labels).set(count)


@dataclass(eq=False)
class GrantSweep:
    """The primary's store work: lapse and expire what is due (on the leader only: a duty done
    once across replicas, `proxy/cluster/leader.py`), then count what there is."""

    grants: GrantService
    counts: RequestCounts
    leading: Callable[[], bool] = lambda: True


@dataclass(eq=False)
class Housekeeping:
    """Runs `jobs` on the loop every `interval` seconds, then the store's look and the sweep in
    a store thread."""

    jobs: list[Callable[[], object]]
    store_health: StoreHealthWatch
    sweep: GrantSweep | None  # None in a worker: the primary sweeps and counts
    store_work: Executor  # SQLite writes may wait for the file lock: never on the event loop
    interval: float = field(default=1.0)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            try:
                for job in self.jobs:
                    job()
                await loop.run_in_executor(self.store_work, self.store_health.check)
                self.store_health.publish()
                if self.sweep is not None:
                    # Attribute lookups at call time: a test may replace `grants.sweep`.
                    if self.sweep.leading():
                        await loop.run_in_executor(self.store_work, self.sweep.grants.sweep)
                    counts = await loop.run_in_executor(self.store_work, self.sweep.counts.read)
                    self.sweep.counts.publish(counts)
            except StateStoreUnavailable as exc:
                log.debug("housekeeping refused by the state store: %s", exc)
            except NotAudited as exc:  # the audit log's failure is loud on its own (/readyz)
                log.debug("housekeeping refused: %s", exc)
            except Exception:
                log.exception("housekeeping failed; retrying in %.0f s", self.interval)
