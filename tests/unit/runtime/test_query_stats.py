"""`QueryStats`: query counts and durations kept in plain numbers, exported when scraped.

The exposition must be what a prometheus_client Counter and Histogram with the same buckets would
give: a value equal to a bound falls in that bound's bucket (`le`), larger ones in +Inf, buckets
are cumulative, and `_count`/`_sum` agree with them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from proxy.runtime.metrics import QUERY_BUCKETS, Metrics


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_buckets_count_and_sum_match_a_prometheus_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = Metrics(ours).queries.tally("orders")
    reference = Histogram("ref_seconds", "x", ["target"], buckets=QUERY_BUCKETS, registry=theirs)
    values = [0.0, 0.0004, 0.0005, 0.00051, 0.001, 0.3, 1, 10, 60, 60.5, 3600]
    for value in values:
        tally.observe(value)
        reference.labels("orders").observe(value)
    for suffix in ("_bucket", "_count", "_sum"):
        assert samples(ours, "pgwarden_query_duration_seconds" + suffix) == samples(
            theirs, "ref_seconds" + suffix
        ), suffix


def test_started_queries_are_counted_per_target() -> None:
    registry = CollectorRegistry()
    stats = Metrics(registry).queries
    stats.tally("orders").started += 3
    stats.tally("_other").started += 1
    stats.tally("orders").started += 2
    assert samples(registry, "pgwarden_queries_total") == {
        (("target", "orders"),): 5,
        (("target", "_other"),): 1,
    }
