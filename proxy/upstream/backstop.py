"""The backstop that makes "zero backends outlive a grant" true: `pg_terminate_backend`.

Ending a session sends the backend a cancel and a Terminate; a healthy backend exits at once. One
that does not (stuck in a long uninterruptible step, or behind a broken network path) is
terminated over a separate *control* connection, as the target's control role (a role with
`pg_signal_backend`, configured per target in the policy). Without a control role pgwarden can
only log that the backend outlived its session.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from proxy.policy.models import SecretUnavailable, Target
from proxy.upstream.connect import (
    UpstreamError,
    UpstreamLogin,
    connect_upstream,
    terminate_upstream,
)
from proxy.upstream.oneshot import QueryFailed, simple_query
from proxy.wire import TEXT_TRUE

log = logging.getLogger(__name__)

CONTROL_TIMEOUT = 5.0  # seconds for the whole control exchange: login, query, logout


async def terminate_backend(
    target: Target, process_id: int, ssl_context: ssl.SSLContext | None
) -> bool:
    """Terminate backend `process_id` of `target` with the control role; True if it was killed."""
    if target.control is None:
        log.error(
            "backend %d of target %r outlived its session and no control role is configured "
            "to terminate it (add `control:` to the target in the policy)",
            process_id, target.name,
        )  # fmt: skip
        return False
    try:
        async with asyncio.timeout(CONTROL_TIMEOUT):
            return await _terminate(target, process_id, ssl_context)
    except (UpstreamError, SecretUnavailable, TimeoutError, OSError) as exc:
        log.error("could not terminate backend %d of %r: %s", process_id, target.name, exc)
        return False


async def _terminate(target: Target, process_id: int, ssl_context: ssl.SSLContext | None) -> bool:
    assert target.control is not None
    login = UpstreamLogin.for_upstream(
        target.upstream, role=target.control.role, password=target.control.password.read(),
        target=target.name, startup_parameters=(("application_name", "pgwarden-control"),),
    )  # fmt: skip
    conn = await connect_upstream(login, ssl_context=ssl_context)
    try:
        # The pid is an int we got from the backend itself; no client text reaches this query.
        rows = await simple_query(conn, f"SELECT pg_terminate_backend({int(process_id)})")
    except QueryFailed as exc:
        log.error("pg_terminate_backend(%d) failed: %s", process_id, exc)
        return False
    finally:
        await terminate_upstream(conn)
    killed = rows == [(TEXT_TRUE,)]
    if killed:
        log.warning("terminated backend %d of %r after its session", process_id, target.name)
    return killed
