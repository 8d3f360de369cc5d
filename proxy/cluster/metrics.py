"""The metrics of a replica's view of the shared state store (`replica.py`), declared together."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

# A change should reach every replica within milliseconds; past a second a NOTIFY was lost.
PROPAGATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class ReplicaMetrics:
    """A replica's view of the shared state store (`proxy/cluster/replica.py`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.store_up = Gauge(
            "pgwarden_state_store_up", "1 while this replica's change feed is connected to "
            "the state database; 0 while it cannot reach it",
            registry=registry,
        )  # fmt: skip
        self.staleness = Gauge(
            "pgwarden_state_staleness_seconds", "Seconds since the state database last "
            "confirmed this replica's view of the active grants (logins are refused past "
            "state.max_staleness)",
            registry=registry,
        )  # fmt: skip
        self.propagation_delay = Histogram(
            "pgwarden_state_propagation_delay_seconds", "From a change committed (on any "
            "replica) to its announcement applied on this one",
            buckets=PROPAGATION_BUCKETS, registry=registry,
        )  # fmt: skip
