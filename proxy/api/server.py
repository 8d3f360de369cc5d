"""The API's listener and lifecycle, on the proxy's own event loop: start, port, stop.

`api_server()` builds it from a running pgwarden's parts (what `Runtime` calls); `ApiServer` can
also be built from an `ApiContext` directly (the unit tests). `start()` returns once the socket is
bound and logs `pgwarden API listening on HOST:PORT` (tests read the port from that line, as they
do for the Postgres listener). `stop()` stops accepting and gives requests in progress
`SHUTDOWN_GRACE` seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry

from proxy.api.app import Pages, build_app
from proxy.api.context import (
    ApiContext,
    Notifier,
    OtherReplicas,
    OtherWorkers,
    ProxyAddress,
    ReadinessCheck,
    SlackHandler,
)
from proxy.clock import Clock
from proxy.config import ServerConfig
from proxy.grants.lifecycle import GrantService
from proxy.grants.store import StateStoreUnavailable, Store
from proxy.identity.signin import SignInService
from proxy.policy.models import Policy
from proxy.session.server import ProxyServer

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 2.0  # seconds for API requests in progress at shutdown
LISTEN_BACKLOG = 128


class ApiServer:
    """The HTTP API on `host:port` (port 0: any free port)."""

    def __init__(
        self, context: ApiContext, host: str, port: int, pages: Pages | None = None
    ) -> None:
        self.context, self._pages = context, pages
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(
            build_app(self.context, self._pages), shutdown_timeout=SHUTDOWN_GRACE
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, backlog=LISTEN_BACKLOG)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("pgwarden API listening on %s:%d", self._host, self.port)

    @property
    def port(self) -> int:
        """The port actually bound."""
        assert self._runner is not None, "the API server is not started"
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self.context.identity is not None:
            await self.context.identity.close()
        self.context.executor.shutdown(wait=True, cancel_futures=True)


def api_server(
    config: ServerConfig,
    *,
    grants: GrantService,
    store: Store,
    policy: Callable[[], Policy],
    proxy: ProxyServer,
    notifier: Notifier,
    clock: Clock,
    metrics: CollectorRegistry = REGISTRY,
    checks: Iterable[ReadinessCheck] = (),
    workers: OtherWorkers | None = None,
    replicas: OtherReplicas | None = None,
    identity: SignInService | None = None,
    store_tolerated: Callable[[], bool] | None = None,
    slack: SlackHandler | None = None,
    pages: Pages | None = None,
) -> ApiServer:
    """The API of a pgwarden: its grants, store, policy, live sessions and notifier; `checks`
    add to the readiness of the store, policy and listener; `workers` are the other processes.
    `store_tolerated`: whether a state store problem leaves the server ready (a replica serving
    logins from memory, within `state.max_staleness`): then it is a note, not a problem.
    `pages`: more routes on the same server (the web console, proxy/web)."""
    address = ProxyAddress(
        listen=config.proxy.listen,
        public=config.api.public_proxy_address,
        bound_port=lambda: proxy.port,
        tls=config.proxy.tls is not None,
    )
    state = store_check(store)
    notes = []
    if store_tolerated is not None:
        state, notes = _unless(store_tolerated, state), [_while(store_tolerated, state)]
    ready = [state, policy_check(policy), listener_check(proxy), *checks]
    context = ApiContext(
        grants, store, policy, clock, proxy.ctx.registry, notifier, address, ready, metrics,
        workers, replicas, identity=identity, readiness_notes=notes, slack=slack,
    )  # fmt: skip
    return ApiServer(context, config.api.listen.host, config.api.listen.port, pages)


def _unless(tolerated: Callable[[], bool], check: ReadinessCheck) -> ReadinessCheck:
    """`check`, passing while `tolerated()` holds."""
    return lambda: None if tolerated() else check()


def _while(tolerated: Callable[[], bool], check: ReadinessCheck) -> ReadinessCheck:
    """`check`'s problem as a note while `tolerated()` holds (after, it is a problem)."""
    return lambda: check() if tolerated() else None


def listener_check(proxy: ProxyServer) -> ReadinessCheck:
    """Ready while the Postgres listener holds its socket."""

    def postgres_listener() -> str | None:
        try:
            proxy.port  # noqa: B018 - raises when there is no bound socket
        except (AssertionError, IndexError, AttributeError, OSError):
            return "the Postgres listener is not running"
        return None

    return postgres_listener


def store_check(store: Store) -> ReadinessCheck:
    """Ready when the state store answers a read and has no problem: its file is still the one
    it opened, and its last write did not fail (store_watch.py)."""

    def state_store() -> str | None:
        try:
            store.changes()
        except StateStoreUnavailable as exc:
            return exc.explanation
        except Exception:
            log.exception("readiness: the state store cannot be read")
            return "the state store cannot be read"
        problem = store.problem()
        return None if problem is None else problem.explanation

    return state_store


def policy_check(policy: Callable[[], Policy]) -> ReadinessCheck:
    """Ready when a policy with at least one target is in force (a rejected reload keeps the old
    one in force, so this fails only if there never was a usable one)."""

    def policy_in_force() -> str | None:
        return None if policy().targets else "the policy in force has no targets"

    return policy_in_force
