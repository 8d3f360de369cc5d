"""`pgwarden serve`: wire the parts together and run them until SIGTERM.

Builds, from the server config: the policy holder (reloaded when the file changes and on SIGHUP),
the state store and grant service, the client-facing TLS context, the login throttle and
admission limits, the Postgres listener, the webhook notifier and the HTTP API (`proxy/api`);
then runs the housekeeping loop (policy reload check, lapse/expiry sweep) once a second until
told to stop, and shuts down with the configured grace.

`Runtime` is the in-process form the tests use: `start()` returns once the listener is bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from proxy.api.server import ApiServer, api_server
from proxy.api.webhooks import Notifier, notification_failures
from proxy.audit import AuditLog
from proxy.audit.records import worker_audit_path
from proxy.audit.redact import Redactor
from proxy.auth.throttle import LoginThrottle, ThrottleRule
from proxy.clock import SYSTEM_CLOCK, Clock
from proxy.config import ServerConfig, ThrottleSettings
from proxy.errors import PgwardenError
from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import AccessRequest, Action, RequestId, RequestState, Transition
from proxy.grants.store import SqliteStore
from proxy.net.tls import server_channel_binding, server_ssl_context
from proxy.policy.reload import PolicyHolder, ReloadOutcome, ReloadResult
from proxy.runtime.auditing import (
    LifecycleAuditor,
    SecretsToRedact,
    SessionAuditor,
    open_audit_log,
    query_limits,
)
from proxy.runtime.metrics import Metrics, MetricsObserver, policy_label
from proxy.session.admission import Admission, AdmissionLimits
from proxy.session.context import ClientTls, ProxyContext
from proxy.session.enforcer import EnforcementSettings, Enforcer
from proxy.session.registry import SessionRegistry
from proxy.session.server import ProxyServer
from proxy.session.session import Session
from proxy.upstream.pool import UpstreamPool
from proxy.workers.link import PrimaryLink
from proxy.workers.primary import WorkerSet
from proxy.workers.shares import share_limits
from proxy.workers.wiring import link_to_primary, start_workers, worker_config

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 1.0  # seconds: policy file check and grant sweep
STORE_THREADS = 2  # housekeeping and enforcement each wait for one store call at a time


@dataclass(eq=False)
class Runtime:
    """A running pgwarden: its config, policy, grants and Postgres listener."""

    config: ServerConfig
    clock: Clock = SYSTEM_CLOCK
    worker: int = 0  # 0: the primary (API, sweep, other workers); k > 0: a worker process
    config_path: Path | None = None  # what worker processes are started with
    policy: PolicyHolder = field(init=False)
    store: SqliteStore = field(init=False)
    grants: GrantService = field(init=False)
    server: ProxyServer = field(init=False)
    enforcer: Enforcer = field(init=False)
    metrics_registry: CollectorRegistry = field(init=False)
    metrics: Metrics = field(init=False)
    notifier: Notifier = field(init=False)
    audit: AuditLog = field(init=False)
    redact: SecretsToRedact = field(init=False)
    api: ApiServer = field(init=False)  # api.context.readiness_checks: the /readyz hook
    auditor: SessionAuditor = field(init=False)
    pool: UpstreamPool | None = field(init=False, default=None)  # upstream_pool, when enabled
    workers: WorkerSet | None = field(init=False, default=None)  # the primary's, when workers > 1
    link: PrimaryLink | None = field(init=False, default=None)  # a worker's channel to the primary
    _audit_errors_seen: int = field(init=False, default=0)
    _reuses_seen: int = field(init=False, default=0)
    _tasks: list[asyncio.Task[None]] = field(init=False, default_factory=list)
    # The threads that read and write the store for housekeeping and enforcement: `stop` waits
    # for them before it closes the store (a cancelled task does not stop its thread).
    _store_work: ThreadPoolExecutor = field(
        init=False,
        default_factory=lambda: ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="pgw-store"),
    )

    def __post_init__(self) -> None:
        # One registry per runtime: /metrics serves it, and tests may run several runtimes.
        self.metrics_registry = CollectorRegistry()
        ProcessCollector(registry=self.metrics_registry)
        self.metrics = Metrics(self.metrics_registry)
        pool = self.config.upstream_pool
        self.pool = UpstreamPool(pool, self.clock.monotonic) if pool.enabled else None
        self.policy = PolicyHolder.open(self.config.paths.policy, on_reload=self._policy_reloaded)
        self.redact = SecretsToRedact()
        audit_path = worker_audit_path(self.config.paths.audit_log, self.worker)
        self.audit = open_audit_log(self.config.audit, audit_path, self.clock, self.redact)
        self.store = SqliteStore(self.config.paths.state)
        self.grants = GrantService(self.store, self.clock, lambda: self.policy.current)
        self._audit_lifecycle()
        ctx = build_context(self.config, self.policy, self.grants, self.clock, self.worker)
        ctx.upstream_pool = self.pool
        self.auditor = SessionAuditor(
            self.audit, Redactor(self.redact), query_limits(self.config.audit),
            self.config.audit.fsync, record_queries=self.config.audit.record_queries,
        )  # fmt: skip
        # The auditor first: when it refuses a session (fail closed), nothing else counts it.
        ctx.observers.extend(
            [self.auditor, MetricsObserver(self.metrics, lambda: self.policy.current)]
        )
        listen = self.config.proxy.listen
        many = self.config.proxy.workers > 1
        self.server = ProxyServer(ctx, listen.host, listen.port, reuse_port=many)
        sessions = self.config.sessions
        self.enforcer = Enforcer(
            ctx.registry, self.grants, lambda: self.policy.current, self.clock,
            settings=EnforcementSettings(
                warn_before=tuple(offset.total_seconds() for offset in sessions.warn_before),
                long_session_after=sessions.long_session_threshold.total_seconds(),
            ),
            on_long_session=self._long_session, store_work=self._store_work,
        )  # fmt: skip
        failures = notification_failures(self.metrics_registry)
        self.notifier = Notifier(lambda: self.policy.current, self.clock, failures=failures)
        self.api = api_server(
            self.config, grants=self.grants, store=self.store, policy=lambda: self.policy.current,
            proxy=self.server, notifier=self.notifier, clock=self.clock,
            metrics=self.metrics_registry,
        )  # fmt: skip
        self.api.context.readiness_checks.append(
            lambda: None if self.audit.healthy else "the audit log cannot be written"
        )

    def reload_policy(self) -> None:
        """SIGHUP: re-read the policy here and in every worker."""
        self.policy.reload()
        if self.workers is not None:
            self.workers.broadcast("reload")

    def _policy_reloaded(self, result: ReloadResult) -> None:
        self.metrics.policy_reloads.labels(result.outcome.value).inc()
        if result.outcome is ReloadOutcome.APPLIED and self.pool is not None:
            self.pool.clear()  # kept backends may belong to roles or servers no longer named

    def _audit_lifecycle(self) -> None:
        def approvals(request_id: str) -> tuple[int, int]:
            request = self.grants.get(RequestId(request_id))
            target = self.policy.current.targets.get(request.target)
            need = target.approval_for(request.access_level).required_approvals if target else 0
            return len(self.grants.approvals(RequestId(request_id))), need

        def get(request_id: str) -> AccessRequest:
            return self.grants.get(RequestId(request_id))

        auditor = LifecycleAuditor(self.audit, get, approvals)

        def committed(transitions: list[Transition]) -> None:
            auditor.committed(transitions)
            for t in transitions:
                if t.action is Action.EXPIRE:  # the API fires the others; expiry has no caller
                    self.notifier.grant_expired(get(t.request_id))

        self.store.on_commit = committed
        self.grants.on_credential = lambda issued: self.redact.remember(issued, self.clock.now())

    def _long_session(self, session: Session) -> None:
        (target,) = policy_label(self.policy.current, session.info.target)
        self.metrics.long_sessions.labels(target).inc()
        self.auditor.long_session(
            session, self.config.sessions.long_session_threshold.total_seconds()
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.worker == 0:
            await self.server.start()
            self.notifier.bind(loop)
            await self.api.start()
            if self.config.proxy.workers > 1:
                await self._start_workers()
        else:
            await self._join_primary()
        self._tasks = [loop.create_task(self._housekeep()), loop.create_task(self.enforcer.run())]

    async def _start_workers(self) -> None:
        if self.config_path is None:
            raise PgwardenError("proxy.workers > 1 needs the config file's path to start workers")
        self.workers = workers = start_workers(self, self.config_path, self.server.port)
        await workers.start()

    async def _join_primary(self) -> None:
        """A worker: take the primary's secrets, then listen, then say so."""
        assert self.link is not None, "a worker runtime needs link_to_primary() first"
        await self.server.start()
        self.link.notify("ready")

    async def stop(self) -> None:
        await self.api.stop()  # first: no API call may start work on a closing store
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self._store_work.shutdown, wait=True)
        )
        grace = self.config.sessions.shutdown_grace.total_seconds()
        if self.workers is not None:
            await asyncio.gather(self.workers.stop(grace), self.server.shutdown(grace))
        else:
            await self.server.shutdown(grace)
        if self.link is not None:
            self.link.close()
        if self.pool is not None:
            self.pool.clear()
        await self.notifier.close()
        self.store.close()
        self.auditor.flush()
        self.audit.close()

    async def _housekeep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            try:
                self.policy.check_for_changes()
                self._audit_health()
                self._prune_pool()
                if self.link is not None:  # a worker: the primary sweeps and counts
                    text = generate_latest(self.metrics_registry).decode()
                    self.link.notify("metrics", text=text, audit_healthy=self.audit.healthy)
                    continue
                # SQLite writes may wait for the file lock: keep them off the event loop.
                await loop.run_in_executor(self._store_work, self.grants.sweep)
                counts = await loop.run_in_executor(self._store_work, self._request_counts)
                self._publish_counts(counts)
            except Exception:
                log.exception("housekeeping failed; retrying in %.0f s", HOUSEKEEPING_INTERVAL)

    def _request_counts(self) -> tuple[tuple[str, str, str, int], ...]:
        with self.store.read() as tx:
            return tx.request_counts()

    def _publish_counts(self, counts: tuple[tuple[str, str, str, int], ...]) -> None:
        """Requests by state, active grants by target and level (policy names only)."""
        by_state: dict[str, int] = dict.fromkeys((s.value for s in RequestState), 0)
        active: dict[tuple[str, ...], int] = {}
        for state, target, level, count in counts:
            by_state[state] = by_state.get(state, 0) + count
            if state == RequestState.ACTIVE.value:
                labels = policy_label(self.policy.current, target, level)
                active[labels] = active.get(labels, 0) + count
        for state, count in by_state.items():
            self.metrics.requests.labels(state).set(count)
        self.metrics.grants_active.clear()
        for labels, count in active.items():
            self.metrics.grants_active.labels(*labels).set(count)

    def _prune_pool(self) -> None:
        if self.pool is None:
            return
        self.pool.prune()
        self.metrics.upstream_pool_idle.set(self.pool.idle_count)
        self.metrics.upstream_pool_reuses.inc(self.pool.reused - self._reuses_seen)
        self._reuses_seen = self.pool.reused

    def _audit_health(self) -> None:
        self.metrics.audit_healthy.set(1 if self.audit.healthy else 0)
        errors = self.audit.write_errors - self._audit_errors_seen
        if errors > 0:
            self.metrics.audit_write_errors.inc(errors)
            self._audit_errors_seen += errors


def build_context(
    config: ServerConfig, policy: PolicyHolder, grants: GrantService, clock: Clock, worker: int = 0
) -> ProxyContext:
    limits = share_limits(config.limits, config.proxy.workers)
    return ProxyContext(
        policy=lambda: policy.current,
        grants=grants,
        clock=clock,
        throttle=LoginThrottle(
            clock.monotonic,
            per_user=_rule(limits.failed_logins_per_user),
            per_source=_rule(limits.failed_logins_per_source),
        ),
        admission=Admission(
            AdmissionLimits(
                max_preauth=limits.max_preauth_connections,
                max_preauth_per_source=limits.max_preauth_per_source,
                max_sessions=limits.max_sessions,
                max_sessions_per_source=limits.max_sessions_per_source,
            )
        ),
        client_tls=_client_tls(config),
        registry=SessionRegistry(worker),
        login_timeout=config.proxy.login_timeout.total_seconds(),
        max_client_message=limits.max_message_bytes,
    )


def _rule(settings: ThrottleSettings) -> ThrottleRule:
    return ThrottleRule(settings.burst, settings.refill_every.total_seconds())


def _client_tls(config: ServerConfig) -> ClientTls | None:
    files = config.proxy.tls
    if files is None:
        return None
    return ClientTls(
        context=server_ssl_context(files.cert_file, files.key_file),
        channel_binding=server_channel_binding(files.cert_file),
    )


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    """How the primary started this process as worker `index` (hidden `serve` options)."""

    index: int
    channel_fd: int
    port: int


async def serve(
    config: ServerConfig, config_path: Path | None = None, worker: WorkerArgs | None = None
) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the policy (in every worker)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if worker is None:
        runtime = Runtime(config, config_path=config_path)
    else:
        runtime = Runtime(worker_config(config, worker.port), worker=worker.index)
    try:
        if worker is not None:
            await link_to_primary(runtime, worker.channel_fd, stop.set)
        await runtime.start()
    except BaseException:
        await runtime.stop()  # what did start (listener, API, workers) ends cleanly
        raise
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C reaches the whole process group; a worker waits for the primary's `stop` instead,
    # so that the primary never sees it exit first and starts it again.
    loop.add_signal_handler(signal.SIGINT, stop.set if worker is None else lambda: None)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload_policy)
    await stop.wait()
    log.info("stopping: ending sessions (grace %s)", config.sessions.shutdown_grace)
    await runtime.stop()


def run_event_loop(main: Coroutine[object, object, None]) -> None:
    """Run `main` on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, imported where it is used
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
