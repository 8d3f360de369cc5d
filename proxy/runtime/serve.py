"""`pgwarden serve`: wire the parts together and run them until SIGTERM.

Builds, from the server config: the policy holder (reloaded when the file changes and on SIGHUP),
the state store and grant service, the client-facing TLS context, the login throttle and
admission limits, the Postgres listener, the notification outbox and the HTTP API (`proxy/api`) —
after checking everything a person can get wrong, so that a failed start leaves nothing behind
(`startup.py`: the checks, the order files are opened in, and why); then runs the housekeeping
loop (policy reload check, lapse/expiry sweep) once a second until told to stop, and shuts down
with the configured grace.

`Runtime` is the in-process form the tests use: `start()` returns once the listener is bound.
The jobs it runs each second are in `housekeeping.py`, the sessions' dependencies in
`proxy_context.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector

from proxy.api.context import ReadinessCheck
from proxy.api.server import ApiServer, api_server
from proxy.audit import AuditLog
from proxy.audit.records import worker_audit_path
from proxy.audit.redact import Redactor
from proxy.clock import SYSTEM_CLOCK, Clock
from proxy.cluster.replica import ReplicaView
from proxy.cluster.wiring import Cluster, join_cluster
from proxy.config import FsyncPolicy, ListenAddress, ServerConfig
from proxy.errors import PgwardenError
from proxy.grants.lifecycle import GrantService
from proxy.grants.pg_connection import connection_info
from proxy.grants.requests import IssuedCredential, Transition
from proxy.grants.store import Store, StoreTx
from proxy.identity.signin import SignInService
from proxy.policy.models import Policy
from proxy.policy.reload import PolicyHolder, ReloadOutcome, ReloadResult
from proxy.runtime.auditing import LifecycleAuditor, SecretsToRedact, SessionAuditor, query_limits
from proxy.runtime.console import console_pages
from proxy.runtime.duties import Duties, build_duties
from proxy.runtime.housekeeping import (
    AuditHealthWatch,
    GrantSweep,
    Housekeeping,
    MetricsReport,
    PoolWatch,
    RequestCounts,
    StoreHealthWatch,
)
from proxy.runtime.identity_audit import sign_in_service
from proxy.runtime.leftovers import end_leftover_backends
from proxy.runtime.metrics import Metrics, policy_label
from proxy.runtime.metrics_observer import MetricsObserver
from proxy.runtime.proxy_context import Cancel, build_context, new_mock_secret
from proxy.runtime.startup import (
    audit_replica,
    check_startup,
    discard_new_state,
    earlier_life,
    listen_error,
    open_audit,
    open_state_store,
    record_state_created,
    state_dsn,
    state_file,
)
from proxy.session.context import ClientTls
from proxy.session.enforcer import EnforcementSettings, Enforcer
from proxy.session.registry import SessionRegistry
from proxy.session.server import ProxyServer
from proxy.session.session import Session
from proxy.upstream.pool import UpstreamPool
from proxy.workers.link import PrimaryLink, Welcome, join_primary
from proxy.workers.primary import WorkerSet
from proxy.workers.wiring import (
    merged_metrics,
    record_start,
    welcome,
    worker_command,
    worker_config,
)

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 1.0  # seconds: policy file check and grant sweep
STORE_THREADS = 2  # housekeeping and enforcement each wait for one store call at a time


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    """How the primary started this process as worker `index` (hidden `serve` options)."""

    index: int
    channel_fd: int
    port: int


@dataclass(eq=False)
class Runtime:
    """A running pgwarden: its config, policy, grants and Postgres listener.

    Built whole: each part gets the hooks it needs when it is made, none is rebound later.
    `welcome` (what a worker's primary sent it, `join_primary`) makes it a worker process;
    `config_path` with `proxy.workers > 1` makes it the primary of several.
    """

    config: ServerConfig
    clock: Clock = SYSTEM_CLOCK
    worker: int = 0  # 0: the primary (API, sweep, other workers); k > 0: a worker process
    config_path: Path | None = None  # what worker processes are started with
    welcome: Welcome | None = None  # a worker's: from its primary, before it listens
    on_primary_lost: Callable[[], None] = lambda: None  # a worker's: stop this process
    new_state: bool = False  # `--new-state`: start with an empty store although one lived here
    policy: PolicyHolder = field(init=False)
    store: Store = field(init=False)
    grants: GrantService = field(init=False)
    server: ProxyServer = field(init=False)
    enforcer: Enforcer = field(init=False)
    metrics_registry: CollectorRegistry = field(init=False)
    metrics: Metrics = field(init=False)
    duties: Duties = field(init=False)  # notifications, and what only the leader does
    audit: AuditLog = field(init=False)
    redact: SecretsToRedact = field(init=False)
    api: ApiServer = field(init=False)
    auditor: SessionAuditor = field(init=False)
    lifecycle_auditor: LifecycleAuditor = field(init=False)
    housekeeping: Housekeeping = field(init=False)
    pool: UpstreamPool | None = field(init=False, default=None)  # upstream_pool, when enabled
    workers: WorkerSet | None = field(init=False, default=None)  # the primary's, when workers > 1
    link: PrimaryLink | None = field(init=False, default=None)  # a worker's channel to the primary
    replica: ReplicaView | None = field(init=False, default=None)  # with a PostgreSQL store
    cluster: Cluster | None = field(init=False, default=None)  # registry, sessions, cancels
    sign_in: SignInService | None = field(init=False, default=None)  # identity.oidc (issue 18)
    _tasks: list[asyncio.Task[None]] = field(init=False, default_factory=list)
    _created_state: bool = field(init=False, default=False)  # this run created the state file
    _audit_opened: bool = field(init=False, default=False)
    # The threads that read and write the store for housekeeping and enforcement: `stop` waits
    # for them before it closes the store (a cancelled task does not stop its thread).
    _store_work: ThreadPoolExecutor = field(
        init=False,
        default_factory=lambda: ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="pgw-store"),
    )

    def __post_init__(self) -> None:
        config = self.config
        # Checks first, creating nothing; then the state store; then the audit log (startup.py
        # says why in this order). A failure from here on closes what was opened.
        audit_path = worker_audit_path(config.paths.audit_log, self.worker, audit_replica(config))
        listen = self.welcome is None
        checked = check_startup(
            config, audit_path, self._policy_reloaded, listen=listen, new_state=self.new_state
        )
        self.policy = checked.policy
        replaces_lost = self.new_state and listen and earlier_life(config)
        state = config.paths.state  # None: a PostgreSQL store, which has no file (startup.py)
        self._created_state = listen and state is not None and not state.exists()
        expect = self.welcome.state_file if self.welcome is not None else None
        self.replica = ReplicaView.made_for(config.state, self.clock)  # None with SQLite
        if self.replica is not None:
            self.clock = self.replica.clock  # the state database's time (proxy/cluster/feed.py)
        self.store = open_state_store(
            config, on_commit=self._committed, create=listen, expect=expect,
            before_commit=self._recording, on_abort=self._aborted,
            on_changes=self.replica.cache.saw if self.replica is not None else None,
        )  # fmt: skip
        self.redact = SecretsToRedact()
        try:
            self.audit = open_audit(
                config.audit, checked.audit_key, audit_path, self.clock, self.redact
            )
        except BaseException:
            self.discard()
            raise
        self._audit_opened = True
        if self._created_state and state is not None:
            record_state_created(self.audit, state, earlier_life=replaces_lost)
        try:
            self._build(checked.client_tls)
        except BaseException:
            self.audit.close()
            self.discard()
            raise

    def _build(self, client_tls: ClientTls | None) -> None:
        """Everything else: objects in memory, given their hooks as they are made."""
        config, clock = self.config, self.clock
        # One registry per runtime: /metrics serves it, and tests may run several runtimes.
        self.metrics_registry = CollectorRegistry()
        ProcessCollector(registry=self.metrics_registry)
        self.metrics = Metrics(self.metrics_registry)
        # Single sign-on: from here on `_current_policy` is the YAML's with signed-in people.
        self.sign_in = sign_in_service(config, self.store, clock, lambda: self.policy.current,
                                       registry=self.metrics_registry, audit=self.audit,
                                       grants=lambda: self.grants)  # fmt: skip
        if config.upstream_pool.enabled:
            self.pool = UpstreamPool(config.upstream_pool, clock.monotonic)
        self.lifecycle_auditor = LifecycleAuditor(
            self.audit, self._current_policy,
            wait_durable=config.audit.fsync is FsyncPolicy.ALWAYS,
        )  # fmt: skip
        self.grants = GrantService(
            self.store, clock, self._current_policy, on_credential=self._credential_issued,
            cache=self.replica.cache if self.replica is not None else None,
        )  # fmt: skip
        self.auditor = SessionAuditor(
            self.audit, Redactor(self.redact), query_limits(config.audit),
            config.audit.fsync, record_queries=config.audit.record_queries,
        )  # fmt: skip
        self.duties = build_duties(
            config, self.store, self._current_policy, clock, self.metrics,
            primary=self.welcome is None, grants=self.grants,
        )  # fmt: skip
        # With replicas: registered (or refused) first, for the slot in every cancel key.
        self.cluster = join_cluster(config, self.worker, clock.monotonic)
        slot = self.cluster.slot if self.cluster is not None else None
        registry: SessionRegistry[Session] = SessionRegistry(
            self.worker, config.proxy.workers, slot
        )
        # Every process of one server gives an unknown user the same fake salt (row 14).
        mock_secret = self.welcome.mock_secret if self.welcome else new_mock_secret()
        cancel_elsewhere = self._other_processes(registry, mock_secret)
        if self.cluster is not None:
            assert self.replica is not None, "a cluster has a shared store: a replica view"
            self.cluster.attach_sync(registry, self.workers, self.replica.listening)
        self.server = self._proxy_server(registry, mock_secret, cancel_elsewhere, client_tls)
        self.enforcer = Enforcer(
            registry, self.grants, self._current_policy, clock,
            settings=EnforcementSettings(
                warn_before=tuple(o.total_seconds() for o in config.sessions.warn_before),
                long_session_after=config.sessions.long_session_threshold.total_seconds(),
            ),
            on_long_session=self._long_session, store_work=self._store_work,
        )  # fmt: skip
        self.api = self._api_server()
        self.api.context.readiness_notes.append(self.duties.delivery_note)  # notes, in duties.py
        self.housekeeping = self._housekeeping()

    def _current_policy(self) -> Policy:
        if self.sign_in is not None:
            return self.sign_in.people()  # the effective policy (proxy/identity/people.py)
        return self.policy.current

    def _other_processes(self, registry: SessionRegistry[Session], mock_secret: bytes) -> Cancel:
        """The primary's worker set or a worker's link; where a CancelRequest for another
        process's key goes (None with one process)."""
        if self.welcome is not None:
            self.link = PrimaryLink(registry, self._remember, self.on_primary_lost, self._reload)
            return self.link.cancel_elsewhere
        if self.config.proxy.workers == 1:
            return None
        if self.config_path is None:
            raise PgwardenError("proxy.workers > 1 needs the config file's path to start workers")
        self.workers = WorkerSet(
            self.config.proxy.workers,
            worker_command(self.config_path, lambda: self.server.port),
            welcome(self.redact.entries, mock_secret, state_file(self.store)),
            functools.partial(_cancel_here, registry),
            monotonic=self.clock.monotonic,
            started=record_start(
                self.audit, self.config.paths.audit_log, audit_replica(self.config)
            ),
        )
        return self.workers.route_cancel

    def _proxy_server(
        self,
        registry: SessionRegistry[Session],
        mock_secret: bytes,
        cancel_elsewhere: Cancel,
        client_tls: ClientTls | None,
    ) -> ProxyServer:
        ctx = build_context(
            self.config, self._current_policy, self.grants, self.clock, registry,
            mock_secret=mock_secret, cancel_elsewhere=cancel_elsewhere, upstream_pool=self.pool,
            client_tls=client_tls,
            # The auditor first: when it refuses a session (fail closed), nothing else counts it.
            observers=[self.auditor, MetricsObserver(self.metrics, self._current_policy),
                       *(self.cluster.observers if self.cluster is not None else ())],
            other_replicas=self.cluster.peers if self.cluster is not None else None,
        )  # fmt: skip
        listen = self.config.proxy.listen
        many = self.config.proxy.workers > 1
        return ProxyServer(ctx, listen.host, listen.port, reuse_port=many)

    def _api_server(self) -> ApiServer:
        checks: list[ReadinessCheck] = [self._audit_problem]
        if self.replica is not None:
            checks.append(self.replica.problem)
        metrics = self.metrics_registry
        if self.workers is not None:
            checks.append(self.workers.problems)
            metrics = merged_metrics(self.metrics_registry, self.workers)
        return api_server(
            self.config, grants=self.grants, store=self.store, policy=self._current_policy,
            proxy=self.server, notifier=self.duties.outbox, clock=self.clock, metrics=metrics,
            checks=checks, workers=self.workers,
            replicas=self.cluster.sync if self.cluster is not None else None,
            store_tolerated=self.replica.serving_from_memory if self.replica else None,
            identity=self.sign_in, slack=self.duties.slack,
            pages=console_pages(self.config, self.audit),
        )  # fmt: skip

    def _housekeeping(self) -> Housekeeping:
        jobs: list[Callable[[], object]] = [
            self.policy.check_for_changes,
            AuditHealthWatch(self.audit, self.metrics),
        ]
        if self.sign_in is not None:  # other replicas' sign-ins, seen by the change counter
            jobs.append(self.sign_in.people.refresh)
        if self.pool is not None:
            jobs.append(PoolWatch(self.pool, self.metrics))
        if self.replica is not None:
            jobs.append(self.replica.publish)
        sweep = None
        if self.link is not None:  # a worker: the primary sweeps and counts
            jobs.append(MetricsReport(self.link, self.metrics_registry, self.audit))
        else:
            counts = RequestCounts(self.store, self._current_policy, self.metrics)
            sweep = GrantSweep(self.grants, counts, leading=self.duties.leading)
        store_health = StoreHealthWatch(self.store, self.metrics)
        return Housekeeping(jobs, store_health, sweep, self._store_work, HOUSEKEEPING_INTERVAL)

    def _audit_problem(self) -> str | None:
        return None if self.audit.healthy else "the audit log cannot be written"

    def _remember(self, password: str, expires_at: datetime) -> None:
        self.redact.remember_password(password, expires_at, self.clock.now())

    def _reload(self) -> None:
        self.policy.reload()

    def reload_policy(self) -> None:
        """SIGHUP: re-read the policy here and in every worker."""
        self.policy.reload()
        if self.workers is not None:
            self.workers.broadcast("reload")

    def _policy_reloaded(self, result: ReloadResult) -> None:
        self.metrics.policy_reloads.labels(result.outcome.value).inc()
        if result.outcome is ReloadOutcome.APPLIED and self.pool is not None:
            self.pool.clear()  # kept backends may belong to roles or servers no longer named

    def _credential_issued(self, issued: IssuedCredential) -> None:
        """On an API thread: mask the new password in every process's audit log."""
        self.redact.remember(issued, self.clock.now())
        if self.workers is not None:
            self.workers.share_secret(issued.password, issued.expires_at)

    def _committed(self, transitions: list[Transition]) -> None:
        self.lifecycle_auditor.committed(transitions)
        self.duties.committed(transitions)  # its notifications are there to send

    def _recording(self, tx: StoreTx, transitions: list[Transition]) -> None:
        """Before a write's COMMIT: its records, write-ahead (raises NotAudited to refuse it)."""
        self.lifecycle_auditor.before_commit(tx, transitions)
        self.duties.before_commit(tx, transitions)  # the notifications, in the same transaction

    def _aborted(self, transitions: list[Transition], exc: BaseException) -> None:
        self.lifecycle_auditor.aborted(transitions, exc)

    def _long_session(self, session: Session) -> None:
        (target,) = policy_label(self.policy.current, session.info.target)
        self.metrics.long_sessions.labels(target).inc()
        self.auditor.long_session(
            session, self.config.sessions.long_session_threshold.total_seconds()
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.replica is not None:  # listening before the first login (feed.py)
            self.replica.start(
                connection_info(state_dsn(self.config.state)), self.metrics_registry,
                self.cluster.listeners() if self.cluster else None, self._state_changed,
                getattr(self.store, "suspect", None),  # PostgresStore.suspect
            )  # fmt: skip
        if self.link is not None:
            assert self.welcome is not None
            self.link.start(self.welcome)  # the primary's notices, from here on
            await self.server.start()
            self.link.notify("ready")
        else:
            # Before the first client: every mapped-role backend then found is a previous run's.
            scope = self.cluster.sweep_scope() if self.cluster is not None else None
            await end_leftover_backends(self.policy.current, self.metrics, self.audit, scope)
            await _listen(self.server.start, "proxy.listen", self.config.proxy.listen)
            self.duties.start()  # leading (trying to), and delivering while it leads
            await _listen(self.api.start, "api.listen", self.config.api.listen)
            if self.workers is not None:
                await self.workers.start()
            if self.cluster is not None:  # where it listens, and its heartbeat from now on
                await self.cluster.start(self.server.port, self.api.port)
        self._tasks = [
            loop.create_task(self.housekeeping.run()),
            loop.create_task(self.enforcer.run()),
        ]

    def _state_changed(self) -> None:
        """A change announced by another replica, heard by the feed (on its thread)."""
        if self.sign_in is not None:
            self.sign_in.people.refresh()  # who signed in, or left, before what they did
        self.enforcer.wake()

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
        if self.cluster is not None:  # its sessions have ended: the registry marks it stopped
            await self.cluster.stop()
        if self.link is not None:
            self.link.close()
        if self.pool is not None:
            self.pool.clear()
        await self.duties.stop()
        if self.replica is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.replica.stop)
        self.store.close()
        self.auditor.flush()
        self.audit.close()

    def discard(self) -> None:
        """After a start that failed: close the store, and remove its file if this run made it
        and the audit log never opened (no record speaks of it: startup.py). The audit log is
        the caller's to close."""
        if self.cluster is not None:
            self.cluster.abandon()  # its name free again at once, not after its heartbeat expires
        self.store.close()
        if self._created_state and not self._audit_opened and self.config.paths.state:
            discard_new_state(self.config.paths.state)


async def _listen(start: Callable[[], Awaitable[None]], setting: str, at: ListenAddress) -> None:
    try:
        await start()
    except OSError as exc:  # checked free at startup: another process took it since
        raise listen_error(setting, at, exc) from None


def _cancel_here(registry: SessionRegistry[Session], process_id: int, secret: bytes) -> None:
    """A CancelRequest for one of this process's keys, routed here from another process."""
    session = registry.find_by_cancel_key(process_id, secret)
    if session is not None:
        session.cancel_running_query()


async def serve(
    config: ServerConfig,
    config_path: Path | None = None,
    worker: WorkerArgs | None = None,
    *,
    new_state: bool = False,
) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP reloads the policy (in every worker). `new_state`:
    start with an empty state store although the audit log shows an earlier one."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Before anything opens: a SIGTERM while starting stops the server once it has started (its
    # audit log closed cleanly), instead of killing it half-way.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C reaches the whole process group; a worker waits for the primary's `stop` instead,
    # so that the primary never sees it exit first and starts it again.
    loop.add_signal_handler(signal.SIGINT, stop.set if worker is None else lambda: None)
    if worker is None:
        runtime = Runtime(config, config_path=config_path, new_state=new_state)
    else:  # take the primary's secrets before building anything that listens
        joined = await join_primary(worker.channel_fd)
        config = worker_config(config, worker.port)
        runtime = Runtime(config, worker=worker.index, welcome=joined, on_primary_lost=stop.set)
    loop.add_signal_handler(signal.SIGHUP, runtime.reload_policy)
    try:
        await runtime.start()
    except BaseException:
        await runtime.stop()  # what did start (listener, API, workers) ends cleanly
        runtime.discard()  # a state file made for a server that never served
        raise
    await stop.wait()
    log.info("stopping: ending sessions (grace %s)", config.sessions.shutdown_grace)
    await runtime.stop()
