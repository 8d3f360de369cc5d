"""Every Prometheus metric pgwarden exports, declared in one place.

Names start with `pgwarden_`; counters end in `_total`, durations in `_seconds`. Labels come only
from small fixed sets (end reasons, failure reasons, reload results) or from names in the current
policy (targets, access levels): `policy_label` maps anything else to `_other`, so a client that
sends random user or database names cannot create series (SECURITY.md row 45). No metric carries a
user name, a secret or a query.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.policy.models import Policy
from proxy.session.observer import LoginFailure, SessionObserver
from proxy.session.session import Ending, EndReason, Session
from proxy.wire import Frame

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
        self.upstream_pool_idle = Gauge(
            "pgwarden_upstream_pool_idle", "Database backends kept idle for reuse (upstream_pool)",
            registry=registry,
        )  # fmt: skip
        self.upstream_pool_reuses = Counter(
            "pgwarden_upstream_pool_reuses_total", "Sessions served by a kept database backend",
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


class MetricsObserver(SessionObserver):
    """Counts sessions, logins, queries and bytes as the session layer reports them."""

    CLIENT_MESSAGES = frozenset(b"QSF")  # each answered by one ReadyForQuery: one "query"
    UPSTREAM_MESSAGES = frozenset(b"Z")

    def __init__(self, metrics: Metrics, policy: Callable[[], Policy]) -> None:
        self._metrics = metrics
        self._policy = policy
        self._queries: dict[str, _QueryTimer] = {}

    def login_failed(
        self, user: str, target: str, source: str, reason: LoginFailure, detail: str
    ) -> None:
        (label,) = policy_label(self._policy(), target)
        self._metrics.login_failures.labels(label, reason.value).inc()

    def session_started(self, session: Session) -> None:
        labels = policy_label(self._policy(), session.info.target, session.info.access_level)
        self._metrics.sessions_started.labels(*labels).inc()
        self._metrics.sessions_active.labels(*labels).inc()
        self._queries[session.session_id] = _QueryTimer(self._metrics, labels, session.monotonic)

    def session_ended(self, session: Session, ending: Ending) -> None:
        timer = self._queries.pop(session.session_id, None)
        labels = timer.labels if timer is not None else (OTHER, OTHER)
        metrics = self._metrics
        metrics.sessions_active.labels(*labels).dec()
        metrics.sessions_ended.labels(*labels, ending.reason.value).inc()
        now = session.monotonic()
        metrics.session_duration.labels(labels[0]).observe(now - session.started)
        metrics.bytes_relayed.labels(labels[0], "from_client").inc(session.relay.bytes_from_client)
        metrics.bytes_relayed.labels(labels[0], "to_client").inc(session.relay.bytes_from_upstream)
        if ending.reason is EndReason.EXPIRED:
            metrics.kill_latency.observe(max(0.0, now - session.deadline))
        if ending.reason is EndReason.REVOKED or ending.reason is EndReason.REMOVED:
            metrics.kill_latency.observe(max(0.0, now - session.end_requested_at))

    def client_frames(self, session: Session, frames: list[Frame]) -> None:
        timer = self._queries.get(session.session_id)
        if timer is not None:
            queries = self.CLIENT_MESSAGES
            timer.started(sum([frame.type in queries for frame in frames]))

    def upstream_frames(self, session: Session, frames: list[Frame]) -> None:
        timer = self._queries.get(session.session_id)
        if timer is not None:
            timer.finished(sum([frame.type == READY for frame in frames]))


READY = ord("Z")


class _QueryTimer:
    """Per session: when each query in flight started (queries are answered in order)."""

    __slots__ = ("_in_flight", "_monotonic", "_tally", "labels")

    def __init__(
        self, metrics: Metrics, labels: tuple[str, ...], monotonic: Callable[[], float]
    ) -> None:
        self.labels = labels
        self._tally = metrics.queries.tally(labels[0])  # looked up once per session
        self._monotonic = monotonic
        self._in_flight: deque[float] = deque(maxlen=MAX_QUERIES_IN_FLIGHT)

    def started(self, count: int) -> None:
        if count:
            now = self._monotonic()
            self._in_flight.extend([now] * count)
            self._tally.started += count

    def finished(self, count: int) -> None:
        now = self._monotonic()
        for _ in range(min(count, len(self._in_flight))):
            self._tally.observe(now - self._in_flight.popleft())


class _Tally:
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
        self._tallies: dict[str, _Tally] = {}
        registry.register(self)

    def tally(self, target: str) -> _Tally:
        return self._tallies.setdefault(target, _Tally())

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


# A client may pipeline many queries; beyond this many unanswered ones, the oldest are forgotten.
MAX_QUERIES_IN_FLIGHT = 10_000
