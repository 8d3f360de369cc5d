"""Every Prometheus metric pgwarden exports, declared in one place.

Names start with `pgwarden_`; counters end in `_total`, durations in `_seconds`. Labels come only
from small fixed sets (end reasons, failure reasons, reload results) or from names in the current
policy (targets, access levels): `policy_label` maps anything else to `_other`, so a client that
sends random user or database names cannot create series (SECURITY.md row 45). No metric carries a
user name, a secret or a query.

This module only declares; `metrics_observer` feeds the numbers as sessions report them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.policy.models import Policy

OTHER = "_other"  # the label value for anything not named in the policy

# Seconds: logins and queries are fast; sessions and kill latencies span longer ranges.
QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)
SESSION_BUCKETS = (1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400)
KILL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)


class Metrics:
    """The metric objects, registered in one registry (the default one in production)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        target_level = ["target", "access_level"]
        self.build_info = Info("pgwarden_build", "pgwarden version", registry=registry)
        self.build_info.info({"version": __version__})
        self.sessions_active = Gauge(
            "pgwarden_sessions_active", "Live relayed sessions", target_level, registry=registry
        )
        self.sessions_started = Counter(
            "pgwarden_sessions_started_total", "Sessions that logged in", target_level,
            registry=registry,
        )  # fmt: skip
        self.sessions_ended = Counter(
            "pgwarden_sessions_ended_total", "Sessions that ended, by reason",
            [*target_level, "reason"], registry=registry,
        )  # fmt: skip
        self.session_duration = Histogram(
            "pgwarden_session_duration_seconds", "How long sessions lasted", ["target"],
            buckets=SESSION_BUCKETS, registry=registry,
        )  # fmt: skip
        self.login_failures = Counter(
            "pgwarden_login_failures_total", "Refused logins, by internal reason",
            ["target", "reason"], registry=registry,
        )  # fmt: skip
        self.connections_refused = Counter(
            "pgwarden_connections_refused_total",
            "Connections refused at an admission cap (53300), by the cap that refused them",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.queries = QueryStats(registry)
        self.bytes_relayed = Counter(
            "pgwarden_bytes_relayed_total", "Bytes relayed, by direction",
            ["target", "direction"], registry=registry,
        )  # fmt: skip
        self.grants_active = Gauge(
            "pgwarden_grants_active", "Active grants", target_level, registry=registry
        )
        self.requests = Gauge(
            "pgwarden_requests", "Requests by state", ["state"], registry=registry
        )
        self.kill_latency = Histogram(
            "pgwarden_kill_latency_seconds",
            "From a grant's end (or revocation) to its session being gone",
            buckets=KILL_BUCKETS, registry=registry,
        )  # fmt: skip
        self.long_sessions = Counter(
            "pgwarden_long_sessions_total", "Sessions open longer than the configured threshold",
            ["target"], registry=registry,
        )  # fmt: skip
        self.policy_reloads = Counter(
            "pgwarden_policy_reloads_total", "Policy reloads, by result", ["result"],
            registry=registry,
        )  # fmt: skip
        self.audit_write_errors = Counter(
            "pgwarden_audit_write_errors_total", "Audit log write or fsync failures",
            registry=registry,
        )  # fmt: skip
        self.audit_healthy = Gauge(
            "pgwarden_audit_healthy", "1 while the audit log accepts records; 0 means new "
            "sessions are refused", registry=registry,
        )  # fmt: skip
        self.audit_healthy.set(1)
        self.state_store_errors = Counter(
            "pgwarden_state_store_errors_total",
            "State store failures, by kind: a read or write that failed (disk_full, io_error, "
            "read_only, busy, corrupt; PostgreSQL: unreachable, denied), or its file found "
            "deleted or replaced (once)",
            ["kind"], registry=registry,
        )  # fmt: skip
        self.state_store_healthy = Gauge(
            "pgwarden_state_store_healthy", "1 while the state store accepts writes; 0 means "
            "approvals and credentials are refused (and logins, if its file is gone or its "
            "database unreachable)",
            registry=registry,
        )  # fmt: skip
        self.state_store_healthy.set(1)
        self.upstream_pool_idle = Gauge(
            "pgwarden_upstream_pool_idle", "Database backends kept idle for reuse (upstream_pool)",
            registry=registry,
        )  # fmt: skip
        self.upstream_pool_reuses = Counter(
            "pgwarden_upstream_pool_reuses_total", "Sessions served by a kept database backend",
            registry=registry,
        )  # fmt: skip
        self.orphan_backends_ended = Counter(
            "pgwarden_orphan_backends_ended_total",
            "Database backends a previous run of pgwarden left behind (a crash), ended at start",
            ["target"], registry=registry,
        )  # fmt: skip
        # Notifications (proxy/notify) and the leader that sends them (proxy/cluster/leader.py).
        self.notification_failures = Counter(
            "pgwarden_notification_failures_total",
            "Notifications given up after every retry (or never written), by event",
            ["event"], registry=registry,  # one of models.EventKind: a fixed set
        )  # fmt: skip
        self.notifications_undelivered = Gauge(
            "pgwarden_notifications_undelivered",
            "Outbox rows neither delivered nor given up (published by the leader)",
            registry=registry,
        )  # fmt: skip
        self.slack_refused = Counter(
            "pgwarden_slack_requests_refused_total",
            "Slack callbacks refused before any work, by reason",
            ["reason"], registry=registry,  # missing, old, bad, replay, too_large, busy
        )  # fmt: skip
        self.leader = Gauge(
            "pgwarden_leader",
            "1 while this replica leads (sweeps grants and sends notifications), else 0",
            registry=registry,
        )  # fmt: skip


def policy_label(policy: Policy, target: str, level: str | None = None) -> tuple[str, ...]:
    """Label values for a target (and level) that exist in `policy`; `_other` otherwise."""
    known = policy.targets.get(target)  # type: ignore[call-overload]
    target_value = target if known is not None else OTHER
    if level is None:
        return (target_value,)
    level_known = known is not None and level in known.access_levels
    return target_value, level if level_known else OTHER


class QueryTally:
    """One target's queries: how many started, and a histogram of how long they took."""

    __slots__ = ("buckets", "started", "total")

    def __init__(self) -> None:
        self.started = 0
        self.buckets = [0] * (len(QUERY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(QUERY_BUCKETS, seconds)] += 1  # le: the first bound >= it
        self.total += seconds


class QueryStats(Collector):
    """`pgwarden_queries_total` and `pgwarden_query_duration_seconds{target}`, counted in plain
    numbers on the relay's path and turned into samples when Prometheus scrapes: a Counter.inc
    and a Histogram.observe per query cost more (locks, checks) than the rest of the relay's
    bookkeeping together. A scrape from another thread may see one query more in the count than
    in the histogram; each is exact on its own."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._tallies: dict[str, QueryTally] = {}
        registry.register(self)

    def tally(self, target: str) -> QueryTally:
        return self._tallies.setdefault(target, QueryTally())

    def collect(self) -> Iterator[Metric]:
        count = CounterMetricFamily(
            "pgwarden_queries", "Queries relayed (Query, Sync, FunctionCall)", labels=["target"]
        )
        duration = HistogramMetricFamily(
            "pgwarden_query_duration_seconds", "From a query to its ReadyForQuery",
            labels=["target"],
        )  # fmt: skip
        for target, tally in list(self._tallies.items()):
            count.add_metric([target], tally.started)
            cumulative, buckets = 0, []
            bounds = (*QUERY_BUCKETS, float("inf"))
            for bound, observed in zip(bounds, list(tally.buckets), strict=True):
                cumulative += observed
                buckets.append((_bound(bound), cumulative))
            duration.add_metric([target], buckets, tally.total)
        yield count
        yield duration


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
