"""What the API's handlers need from the rest of pgwarden, injected in one value.

Handlers reach the grants, the store (tokens), the current policy, the live sessions, the
notifier and the clock only through `ApiContext`, so unit tests build one with a temporary store,
a policy made in code and a fake clock. `ApiContext.blocking()` is how a handler runs anything
that touches SQLite or derives a key (PBKDF2): never on the event loop, and in the API's own small
thread pool (`API_THREADS`), not the loop's default executor — so that a flood of API calls
(bogus tokens included) cannot starve the enforcer's and the housekeeping's store reads, which
run there and are what ends sessions on revocation.

`readiness_checks` is the documented hook for `/readyz`: each callable returns None when its part
is ready, or a short problem text; they run in the executor, so they may block briefly.
`api_server()` registers the store, policy and listener checks and the runtime's own (the audit
log, the worker processes).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, Protocol, TypeVar

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry

from proxy.addresses import ListenAddress
from proxy.clock import Clock
from proxy.grants.lifecycle import GrantService
from proxy.grants.store import Store
from proxy.identity.signin import SignInService
from proxy.policy.models import Policy, UserName
from proxy.session.registry import SessionRegistry
from proxy.session.session import Ending, Session, SessionInfo

P = ParamSpec("P")
T = TypeVar("T")

ReadinessCheck = Callable[[], str | None]
# Threads for the API's blocking work. SQLite calls take milliseconds and PBKDF2 tens of them;
# four keep a burst of people responsive without taking more than a slice of the machine.
API_THREADS = 4
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names them to avoid them


class Notifier(Protocol):
    """Announces what the API did that the lifecycle does not (proxy/notify/outbox.py Outbox);
    blocking: call it through `blocking()`."""

    def session_killed(self, info: SessionInfo, actor: str, reason: str) -> None: ...


class SlackHandler(Protocol):
    """Works on Slack's verified callbacks (proxy/notify/slack_actions.py SlackActions)."""

    def signing_secret(self) -> str | None: ...  # blocking: may read a file
    def refused(self, reason: str) -> None: ...
    def spawn(self, payload: dict[str, Any]) -> bool: ...


class OtherWorkers(Protocol):
    """The sessions of the other worker processes (proxy/workers/primary.py WorkerSet)."""

    async def sessions(self) -> list[SessionInfo]: ...
    async def find(self, session_id: str) -> tuple[int, SessionInfo] | None: ...
    async def end(self, worker: int, session_id: str, ending: Ending) -> bool: ...


class OtherReplicas(Protocol):
    """The sessions of the other replicas (proxy/cluster/sessions.py ReplicaSync); blocking,
    run in `ApiContext.blocking`. PgwardenError when the registry cannot be read."""

    @property
    def replica_id(self) -> str: ...
    def sessions(self) -> list[tuple[str, SessionInfo]]: ...
    def find(self, session_id: str) -> tuple[str, bool, SessionInfo] | None: ...
    def order_kill(
        self, holder: str, session_id: str, *, actor: str, message: str, detail: str
    ) -> int: ...
    def kill_outcome(self, order: int) -> bool | None: ...


@dataclass(frozen=True, slots=True)
class ProxyAddress:
    """Where the Postgres listener is advertised to clients (see `ApiContext.proxy_address`)."""

    listen: ListenAddress  # `proxy.listen` from the config
    public: ListenAddress | None = None  # `api.public_proxy_address`, if set
    bound_port: Callable[[], int] | None = None  # the port actually bound (port 0 in tests)
    tls: bool = False  # the proxy offers TLS to clients


@dataclass(eq=False)
class ApiContext:
    grants: GrantService
    store: Store
    policy: Callable[[], Policy]
    clock: Clock
    registry: SessionRegistry[Session]
    notifier: Notifier
    proxy: ProxyAddress
    readiness_checks: list[ReadinessCheck] = field(default_factory=list)
    metrics: CollectorRegistry = REGISTRY  # what /metrics serves
    workers: OtherWorkers | None = None  # the other worker processes' sessions (proxy.workers)
    replicas: OtherReplicas | None = None  # the other replicas' sessions (PostgreSQL store)
    identity: SignInService | None = None  # single sign-on, when `identity.oidc` is configured
    slack: SlackHandler | None = None  # Slack's callbacks (api/slack_routes.py)
    # Shown by /readyz without failing it: a replica serving logins from memory while its state
    # database is away (proxy/cluster/replica.py) is still ready, and says so.
    readiness_notes: list[ReadinessCheck] = field(default_factory=list)
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(API_THREADS, thread_name_prefix="pgwarden-api")
    )

    async def blocking(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in the API's thread pool, never on the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    def proxy_address(self, request_host: str | None) -> tuple[str, int]:
        """The (host, port) to put in a credential: the configured public address; else the
        proxy's listen address, or — when it listens on a wildcard, which no client can dial —
        the host the caller reached the API at (pgwarden's API and proxy share a host)."""
        if self.proxy.public is not None:
            return self.proxy.public.host, self.proxy.public.port
        host = self.proxy.listen.host
        if host in WILDCARD_HOSTS:
            host = request_host or "localhost"
        port = self.proxy.bound_port() if self.proxy.bound_port else self.proxy.listen.port
        return host, port


CONTEXT = web.AppKey("context", ApiContext)
USER = web.RequestKey[UserName]("user")
