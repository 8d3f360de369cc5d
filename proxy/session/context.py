"""Everything a client connection needs from the rest of pgwarden, injected in one value.

The handshake and the session read the current policy, the grants, the clock, the limits and the
TLS material only through a `ProxyContext`, so tests can build one with a fake clock and a
temporary store, and nothing in `proxy/session` reaches for globals.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from proxy.auth import SaltedPasswordCache
from proxy.auth.throttle import LoginThrottle
from proxy.clock import Clock
from proxy.grants.lifecycle import GrantService
from proxy.net.tls import upstream_ssl_context
from proxy.policy.models import Policy, Upstream, UpstreamTlsMode
from proxy.session.admission import Admission, AdmissionLimits
from proxy.session.observer import SessionObserver
from proxy.session.quiet_log import QuietLog
from proxy.session.registry import SessionRegistry
from proxy.session.session import Session
from proxy.upstream.liveness import UnsupportedSettings
from proxy.upstream.pool import UpstreamPool
from proxy.wire import CancelRequest
from proxy.wire.limits import DEFAULT_MAX_MESSAGE_LENGTH

# The mock SCRAM secret only has to be unguessable and stable for the life of the process (and
# the same in every worker process: the primary hands its own down, see proxy/workers/shares.py).
MOCK_SECRET_BYTES = 32


class OtherReplicas(Protocol):
    """Where a CancelRequest for another replica's key goes (proxy/cluster/peers.py)."""

    async def forward_cancel(self, slot: int, request: CancelRequest) -> None: ...


@dataclass(frozen=True, slots=True)
class ClientTls:
    """pgwarden's TLS server side: the context, and our certificate's channel-binding data."""

    context: ssl.SSLContext
    channel_binding: bytes | None  # None: the certificate's hash is undefined; no -PLUS


@dataclass(eq=False)
class ProxyContext:
    """The dependencies of every client connection (one per server)."""

    policy: Callable[[], Policy]
    grants: GrantService
    clock: Clock
    throttle: LoginThrottle
    admission: Admission = field(default_factory=lambda: Admission(AdmissionLimits()))
    registry: SessionRegistry[Session] = field(default_factory=SessionRegistry)
    client_tls: ClientTls | None = None
    login_timeout: float = 10.0
    upstream_connect_timeout: float = 10.0
    max_client_message: int = DEFAULT_MAX_MESSAGE_LENGTH
    observers: list[SessionObserver] = field(default_factory=list)
    mock_secret: bytes = field(default_factory=lambda: secrets.token_bytes(MOCK_SECRET_BYTES))
    scram_cache: SaltedPasswordCache = field(default_factory=SaltedPasswordCache)
    upstream_pool: UpstreamPool | None = None  # None: every session logs in upstream anew
    # pgwarden's own upstream settings each database refused (PostgreSQL < 14: liveness.py).
    unsupported_settings: UnsupportedSettings = field(default_factory=UnsupportedSettings)
    # With several workers: hand a CancelRequest to the worker that issued its key (worker,
    # process id, secret); see registry.owner (the secret names the worker).
    cancel_elsewhere: Callable[[int, int, bytes], None] | None = None
    # With several replicas: pass a CancelRequest for another replica's key on (its slot).
    other_replicas: OtherReplicas | None = None
    # Prefix the upstream application_name with `pgwarden:<user>:<grant>` (opening.py).
    identity_in_application_name: bool = True
    login_notice: bool = True  # tell the client at login how long its access lasts
    _upstream_contexts: dict[tuple[UpstreamTlsMode, Path | None], ssl.SSLContext | None] = field(
        default_factory=dict
    )
    # Lines about floods (refused connections, throttled logins), rate-limited on our clock.
    quiet_log: QuietLog = field(init=False)

    def __post_init__(self) -> None:
        self.quiet_log = QuietLog(self.clock.monotonic)

    def upstream_ssl_context(self, upstream: Upstream) -> ssl.SSLContext | None:
        """The TLS context for an upstream, built once per (mode, CA file)."""
        key = (upstream.tls, upstream.ca_file)
        if key not in self._upstream_contexts:
            self._upstream_contexts[key] = upstream_ssl_context(upstream.tls, upstream.ca_file)
        return self._upstream_contexts[key]
