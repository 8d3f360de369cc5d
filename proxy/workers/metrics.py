"""/metrics of a server with several worker processes: one family per name, a `worker` label.

Each worker sends the primary its Prometheus text every second (`proxy/workers/primary.py`); on
a scrape the primary merges those snapshots with its own registry: every sample keeps its labels
and gains `worker="k"` (the primary is 0), so `sum without (worker) (...)` gives the server's
total. A worker's figures are at most a second old; a worker that died drops out until it is
back (its counters start again from zero, which Prometheus reads as a counter reset).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

log = logging.getLogger(__name__)

WORKER_LABEL = "worker"


class WorkerMetrics:
    """A collector: the primary's metrics and every worker's latest snapshot, merged."""

    def __init__(self, own: CollectorRegistry, snapshots: Callable[[], Mapping[int, str]]) -> None:
        self._own = own
        self._snapshots = snapshots

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        # The primary's own metrics go through the text format too, so that every family is
        # named and typed exactly as the workers' parsed ones (Info, `_created`).
        snapshots = {0: generate_latest(self._own).decode(), **self._snapshots()}
        for worker, text in sorted(snapshots.items()):
            try:
                families = list(text_string_to_metric_families(text))
            except ValueError:
                log.exception("worker %d sent metrics that do not parse; skipped", worker)
                continue
            _add(merged, worker, families)
        return merged.values()


def _add(merged: dict[str, Metric], worker: int, families: Iterable[Metric]) -> None:
    label = str(worker)
    for family in families:
        into = merged.get(family.name)
        if into is None:
            into = Metric(family.name, family.documentation, family.type, family.unit)
            merged[family.name] = into
        into.samples.extend(
            Sample(s.name, {**s.labels, WORKER_LABEL: label}, s.value, s.timestamp, s.exemplar)
            for s in family.samples
        )
