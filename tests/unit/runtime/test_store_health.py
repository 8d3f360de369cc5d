"""Housekeeping's look at the state store: noticed with no traffic, published as metrics."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from proxy.grants.store import SqliteStore
from proxy.runtime.housekeeping import STORE_ERROR_KINDS, StoreHealthWatch
from proxy.runtime.metrics import Metrics


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_a_deleted_state_file_shows_in_the_metrics_within_one_tick(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    path = tmp_path / "state.db"
    with SqliteStore(path) as store:
        watch = StoreHealthWatch(store, Metrics(registry))
        watch.check()
        watch.publish()
        assert sample(registry, "pgwarden_state_store_healthy") == 1
        # Every kind is a series from the start, so that `increase()` sees the first error.
        for kind in STORE_ERROR_KINDS:
            assert sample(registry, "pgwarden_state_store_errors_total", kind=kind) == 0
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        for _ in range(3):  # counted once, however often it is looked at
            watch.check()
            watch.publish()
        assert sample(registry, "pgwarden_state_store_healthy") == 0
        assert sample(registry, "pgwarden_state_store_errors_total", kind="deleted") == 1
        assert sample(registry, "pgwarden_state_store_errors_total", kind="disk_full") == 0
