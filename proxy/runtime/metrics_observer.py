"""The session observer that feeds the metrics: `MetricsObserver` counts sessions, logins,
refused connections, queries and bytes into the objects `metrics` declares.

It lives beside the runtime's other observer (the auditor), apart from the declarations:
`metrics` says what is exported, this module says when each number moves. Query durations are
timed per session by `_QueryTimer` on the relay's path, so it keeps to plain arithmetic on the
`QueryTally` it looked up once (see `QueryStats` for why).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from proxy.policy.models import Policy
from proxy.runtime.metrics import OTHER, Metrics, policy_label
from proxy.session.admission import Cap
from proxy.session.observer import LoginFailure, SessionObserver
from proxy.session.session import Ending, EndReason, Session
from proxy.wire import FUNCTION_CALL, QUERY, READY_FOR_QUERY, SYNC, Frame

# A client may pipeline many queries; beyond this many unanswered ones, the oldest are forgotten.
MAX_QUERIES_IN_FLIGHT = 10_000


class MetricsObserver(SessionObserver):
    """Counts sessions, logins, queries and bytes as the session layer reports them."""

    # Each answered by one ReadyForQuery: one "query".
    CLIENT_MESSAGES = frozenset((QUERY, SYNC, FUNCTION_CALL))
    UPSTREAM_MESSAGES = frozenset((READY_FOR_QUERY,))

    def __init__(self, metrics: Metrics, policy: Callable[[], Policy]) -> None:
        self._metrics = metrics
        self._policy = policy
        self._queries: dict[str, _QueryTimer] = {}

    def connection_refused(self, source: str, cap: Cap) -> None:
        self._metrics.connections_refused.labels(cap.value).inc()

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
            timer.finished(sum([frame.type == READY_FOR_QUERY for frame in frames]))


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
