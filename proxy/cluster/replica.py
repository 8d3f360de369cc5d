"""One replica's view of the shared state: its grant cache, its change feed, its corrected clock.

Made by the runtime before the state store opens (the store tells the cache each change counter
it commits), started once the store is open, stopped before it closes. With a SQLite store there
is no replica view: one server reads its own file, and nothing here is made.

What it publishes: `pgwarden_state_store_up` (the feed is connected), the staleness of the view,
the propagation delay; and a readiness problem once the view is older than `max_staleness`,
which is also when logins start being refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry

from proxy.clock import Clock, OffsetClock
from proxy.cluster.feed import ChangeFeed
from proxy.cluster.metrics import ReplicaMetrics
from proxy.config import StateBackend, StateSettings
from proxy.grants.grant_cache import GrantCache

FIRST_READ_WAIT: Final = 3.0  # seconds `start` waits for the feed's first read of the grants


@dataclass(eq=False)
class ReplicaView:
    """The cache, the feed and the clock of one process of a replica."""

    settings: StateSettings
    clock: OffsetClock
    cache: GrantCache
    feed: ChangeFeed | None = field(default=None)
    metrics: ReplicaMetrics | None = field(default=None)

    @classmethod
    def made_for(cls, settings: StateSettings, clock: Clock) -> ReplicaView | None:
        """The view a server with these settings needs (None with SQLite)."""
        if settings.backend is not StateBackend.POSTGRES:
            return None
        corrected = OffsetClock(clock)  # `clock` is this host's, whatever it is
        return cls(settings, corrected, GrantCache(corrected, settings.max_staleness))

    def start(
        self,
        conninfo: str,
        registry: CollectorRegistry,
        listeners: Mapping[str, Callable[[str], None]] | None = None,
        on_change: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """Listen from now on (a thread); the first read of the grants follows at once.
        `listeners`: other channels to hear, and who hears each (kill orders); `on_change`:
        told of each change heard, `on_lost` of the connection lost (from the feed's thread)."""
        self.metrics = metrics = ReplicaMetrics(registry)  # in the runtime's /metrics
        self.feed = ChangeFeed(
            conninfo, self.settings.schema, self.cache, self.clock,
            on_delay=metrics.propagation_delay.observe, on_change=on_change, on_lost=on_lost,
        )  # fmt: skip
        for channel, listener in (listeners or {}).items():
            self.feed.listen(channel, listener)
        self.feed.start()
        # The store was just opened: the first read takes milliseconds. Waiting for it (before
        # the server listens) means the first logins are answered from memory and /readyz is
        # true from the start; if it fails, logins read the store until the feed connects.
        self.feed.connected.wait(FIRST_READ_WAIT)

    def listening(self) -> bool:
        """Whether the feed is connected to the state database now."""
        return self.feed is not None and self.feed.connected.is_set()

    def stop(self) -> None:
        if self.feed is not None:
            self.feed.stop()

    def publish(self) -> None:
        """Housekeeping, once a second: the gauges."""
        if self.metrics is None or self.feed is None:
            return
        self.metrics.store_up.set(1 if self.feed.connected.is_set() else 0)
        age = self.cache.age()
        self.metrics.staleness.set(age if math.isfinite(age) else -1)

    def serving_from_memory(self) -> bool:
        """Whether logins can rest on this replica's view (younger than `max_staleness`):
        a state store problem then leaves it ready for the load balancer (/readyz)."""
        return self.cache.age() <= self.cache.max_staleness

    def problem(self) -> str | None:
        """For /readyz: why this replica cannot serve logins from its view, if it cannot."""
        age = self.cache.age()
        if age <= self.cache.max_staleness:
            return None
        when = "has never been read" if not math.isfinite(age) else f"was last read {age:.0f} s ago"
        return (
            f"the state store {when} (state.max_staleness is "
            f"{self.cache.max_staleness:.0f} s); logins are refused until it answers"
        )
