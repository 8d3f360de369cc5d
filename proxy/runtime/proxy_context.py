"""What every client connection of this server depends on (`ProxyContext`), built from config.

The limits are this process's share of the server's (`share_limits`: with N worker processes each
admits 1/N); the login throttle, admission limits, client TLS and the hooks other parts give
(observers, the upstream pool, where another process's CancelRequest goes) are all set here, once.
The client TLS context is built by `server_tls` during the startup checks (`startup.py`), so that
a bad certificate stops the start before any file is created.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from proxy.auth.throttle import LoginThrottle, ThrottleRule
from proxy.clock import Clock
from proxy.config import ServerConfig, ThrottleSettings
from proxy.grants.lifecycle import GrantService
from proxy.net.tls import server_channel_binding, server_ssl_context
from proxy.policy.models import Policy
from proxy.session.admission import Admission, AdmissionLimits
from proxy.session.context import MOCK_SECRET_BYTES, ClientTls, OtherReplicas, ProxyContext
from proxy.session.observer import SessionObserver
from proxy.session.registry import SessionRegistry
from proxy.session.session import Session
from proxy.upstream.pool import UpstreamPool
from proxy.workers.shares import share_limits

# Where a CancelRequest for another process's key goes: (worker, process id, secret).
Cancel = Callable[[int, int, bytes], None] | None


def new_mock_secret() -> bytes:
    """The key of the fake SCRAM salts an unknown user is given (one per server)."""
    return secrets.token_bytes(MOCK_SECRET_BYTES)


def build_context(
    config: ServerConfig,
    policy: Callable[[], Policy],
    grants: GrantService,
    clock: Clock,
    registry: SessionRegistry[Session],
    *,
    mock_secret: bytes,
    observers: list[SessionObserver],
    upstream_pool: UpstreamPool | None = None,
    cancel_elsewhere: Cancel = None,
    client_tls: ClientTls | None = None,
    other_replicas: OtherReplicas | None = None,
) -> ProxyContext:
    limits = share_limits(config.limits, config.proxy.workers)
    return ProxyContext(
        policy=policy,
        grants=grants,
        clock=clock,
        throttle=LoginThrottle(
            clock.monotonic,
            per_source=_rule(limits.failed_logins_per_source),
            per_user_and_source=_rule(limits.failed_logins_per_user_and_source),
            per_user=_rule(limits.failed_logins_per_user),
        ),
        admission=Admission(
            AdmissionLimits(
                max_preauth=limits.max_preauth_connections,
                max_preauth_per_source=limits.max_preauth_per_source,
                max_sessions=limits.max_sessions,
                max_sessions_per_source=limits.max_sessions_per_source,
            )
        ),
        client_tls=client_tls,
        registry=registry,
        login_timeout=config.proxy.login_timeout.total_seconds(),
        max_client_message=limits.max_message_bytes,
        observers=observers,
        mock_secret=mock_secret,
        upstream_pool=upstream_pool,
        cancel_elsewhere=cancel_elsewhere,
        other_replicas=other_replicas,
        identity_in_application_name=config.proxy.identity_in_application_name,
        login_notice=config.proxy.login_notice,
    )


def _rule(settings: ThrottleSettings) -> ThrottleRule:
    return ThrottleRule(settings.burst, settings.refill_every.total_seconds())


def server_tls(config: ServerConfig) -> ClientTls | None:
    """The client-facing TLS of `proxy.tls`, or None; CertificateError names a bad file."""
    files = config.proxy.tls
    if files is None:
        return None
    return ClientTls(
        context=server_ssl_context(files.cert_file, files.key_file),
        channel_binding=server_channel_binding(files.cert_file),
    )
