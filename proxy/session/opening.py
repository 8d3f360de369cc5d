"""From an authenticated login to a relayed session: the upstream login and the greeting.

`connect_for` logs in to the target's database as the role of the grant's access level (the
host, port, database and role come only from the policy; the client's settings pass unless refused),
or takes a kept backend of that role from the upstream pool when it is on (pool.py).
With `proxy.identity_in_application_name` (the default) the upstream application_name is
`pgwarden:<user>:<grant> <client's name>`, for pg_stat_activity, while the client is told its
own name in ParameterStatus; with it off, the client's name goes upstream untouched.
Every session's upstream login carries pgwarden's liveness settings (proxy/upstream/liveness.py:
the database checks during a query that pgwarden is still there), in place of any client value.
`make_ready` registers the session, lets the observers (the audit log first) accept it — a log
that cannot record the login refuses it — then sends the client AuthenticationOk, the database's
ParameterStatus messages, BackendKeyData (the backend's real pid, pgwarden's own secret), a
NOTICE saying how long the access lasts, and ReadyForQuery, and starts the relay.
`forward_cancel` turns a CancelRequest with one of pgwarden's keys into a cancel upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from datetime import datetime

from proxy.errors import PgwardenError
from proxy.policy.models import AccessLevelName, SecretUnavailable
from proxy.session import refusals
from proxy.session.admission import Stage
from proxy.session.context import ProxyContext
from proxy.session.login import ClientConnection, Login
from proxy.session.refusals import AdmissionRefused
from proxy.session.session import Session, SessionInfo, UpstreamHandle
from proxy.upstream.backstop import terminate_backend
from proxy.upstream.connect import (
    UpstreamConnection,
    UpstreamError,
    UpstreamLogin,
    allowed_startup_parameters,
    connect_upstream,
)
from proxy.upstream.liveness import SESSION_SETTINGS
from proxy.wire import (
    AuthenticationOk,
    BackendKeyData,
    CancelRequest,
    NoticeResponse,
    ParameterStatus,
    ReadyForQuery,
    sqlstate,
)

log = logging.getLogger(__name__)

# How long a login may wait for an observer (the audit log's fsync) before it is refused.
OBSERVER_START_TIMEOUT = 5.0
# application_name is cut by Postgres at NAMEDATALEN - 1 bytes.
MAX_APPLICATION_NAME_BYTES = 63


async def connect_for(login: Login, ctx: ProxyContext) -> UpstreamConnection:
    """Log in to the target's database as the role of the grant's access level."""
    policy = ctx.policy()
    target = policy.targets.get(login.target)
    level = target.access_levels.get(login.grant.access_level) if target else None
    if target is None or level is None:
        raise PgwardenError(
            f'pgwarden: access to "{login.target}" is no longer in the policy',
            sqlstate=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
        )
    try:
        password = level.password.read()
    except SecretUnavailable as exc:
        log.error("target %r level %r: %s", login.target, level.name, exc)
        raise PgwardenError(
            f'pgwarden: the database credentials for "{login.target}" ({level.name}) are not '
            "available; tell a pgwarden administrator",
            sqlstate=sqlstate.SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        ) from exc
    parameters = allowed_startup_parameters(login.settings)
    upstream_login = UpstreamLogin.for_upstream(
        target.upstream, role=level.role, password=password, target=login.target,
        startup_parameters=(
            _with_application_name(parameters, login)
            if ctx.identity_in_application_name
            else parameters
        ),
        own_settings=SESSION_SETTINGS,
    )  # fmt: skip

    def connect(login: UpstreamLogin) -> Awaitable[UpstreamConnection]:
        return connect_upstream(
            login,
            scram_cache=ctx.scram_cache,
            ssl_context=ctx.upstream_ssl_context(target.upstream),
            connect_timeout=ctx.upstream_connect_timeout,
            unsupported=ctx.unsupported_settings,
        )

    try:
        if ctx.upstream_pool is None:
            return await connect(upstream_login)
        return await ctx.upstream_pool.connect(
            upstream_login, connect, timeout=ctx.upstream_connect_timeout
        )
    except UpstreamError as exc:
        if exc.sqlstate == sqlstate.INVALID_PASSWORD:
            # A role may change its own password from inside a session (Postgres allows it):
            # restrict the role to pgwarden's address in pg_hba.conf, and reset the password.
            log.error(
                "the database refused role %r of %r (%s): its password no longer matches %s",
                level.role, login.target, level.name, level.password.describe(),
            )  # fmt: skip
        raise


def _with_application_name(
    parameters: tuple[tuple[str, str], ...], login: Login
) -> tuple[tuple[str, str], ...]:
    """Name the pgwarden user and grant in pg_stat_activity, then what the client called itself."""
    client_name = login.application_name
    name = f"pgwarden:{login.user}:{login.grant.request_id}"
    if client_name:
        name = f"{name} {client_name}"
    name = _truncated(name)
    others = tuple(pair for pair in parameters if pair[0] != "application_name")
    return (*others, ("application_name", name))


async def make_ready(
    conn: ClientConnection, login: Login, upstream: UpstreamConnection, ctx: ProxyContext
) -> Session:
    """Register the session, tell the client it is logged in, and start relaying."""
    if (refusal := ctx.admission.admit(Stage.LIVE, conn.source)) is not None:
        upstream.peer.abort()
        refusals.report(ctx, conn.source, refusal, told=True)
        raise AdmissionRefused(refusal, conn.source)
    # The backend's real pid (pg_terminate_backend, NOTIFY senders agree), our own secret.
    process_id = upstream.backend_key.process_id
    secret = ctx.registry.new_cancel_key(process_id)
    now, started = ctx.clock.now(), ctx.clock.monotonic()
    session = Session(
        info=_session_info(conn, login, upstream, ctx),
        client=conn.peer, upstream=upstream.peer,
        upstream_handle=_upstream_handle(login, upstream, ctx),
        cancel_process_id=process_id, cancel_secret=secret,
        max_client_message=ctx.max_client_message, monotonic=ctx.clock.monotonic,
        observers=ctx.observers,
        # The window is agreed in wall-clock time; from here on it is timed on the monotonic
        # clock, so a wall-clock jump can neither cut the session early nor let it run late.
        deadline=started + (login.grant.ends_at - now).total_seconds(), started=started,
    )  # fmt: skip
    try:
        await _start_observing(session, ctx)  # the audit log may refuse: fail closed
    except PgwardenError:
        upstream.peer.abort()
        ctx.admission.release(Stage.LIVE, conn.source)
        raise
    ctx.registry.add(session)
    session.end_listeners.append(lambda s, _e: _release(s, conn.source, ctx))
    greeting = [AuthenticationOk().encode(), *_client_greeting(login, upstream, ctx)]
    greeting.append(BackendKeyData(process_id, secret).encode())
    if ctx.login_notice:
        greeting.append(_time_left_notice(login, now).encode())
    greeting.append(ReadyForQuery(upstream.ready_status).encode())
    conn.peer.write(b"".join(greeting))
    session.start(conn.reader.take_pending_data(), upstream.pending)
    return session


def _time_left_notice(login: Login, now: datetime) -> NoticeResponse:
    """How long this access lasts, told at login: a short grant is never a surprise (the first
    warning before the end may come too late for it, or never)."""
    ends_at = login.grant.ends_at
    until = ends_at.strftime("%H:%M UTC" if ends_at.date() == now.date() else "%Y-%m-%d %H:%M UTC")
    return NoticeResponse.notice(
        sqlstate.SUCCESSFUL_COMPLETION,
        f'pgwarden: {login.grant.access_level} on "{login.target}" until {until} '
        f"({time_left((ends_at - now).total_seconds())} left)",
    )


def time_left(seconds: float) -> str:
    """`45 s`, `29 min`, `2 h 5 min`: rounded down, so that the time shown is really there."""
    whole = max(0, int(seconds))
    if whole < 120:
        return f"{whole} s"
    hours, minutes = divmod(whole // 60, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def _client_greeting(
    login: Login, upstream: UpstreamConnection, ctx: ProxyContext
) -> tuple[bytes, ...]:
    """The database's greeting, but application_name reported as the client set it: the
    identity prefix is for pg_stat_activity, not for the client's own view of its session."""
    if not ctx.identity_in_application_name:
        return upstream.greeting
    own = _truncated(login.application_name)
    return tuple(
        ParameterStatus(message.name, own).encode()
        if isinstance(message, ParameterStatus) and message.name == "application_name"
        else frame
        for frame, message in zip(upstream.greeting, upstream.messages, strict=True)
    )


def _truncated(name: str) -> str:
    return name.encode("utf-8")[:MAX_APPLICATION_NAME_BYTES].decode("utf-8", "ignore")


async def _start_observing(session: Session, ctx: ProxyContext) -> None:
    """Tell each observer, in order, waiting for what one must finish first (the record of the
    login being durable, with audit fsync `always`) before the next hears of the session."""
    for observer in ctx.observers:
        pending = observer.session_started(session)
        if pending is not None:
            try:
                await asyncio.wait_for(asyncio.wrap_future(pending), OBSERVER_START_TIMEOUT)
            except TimeoutError as exc:
                raise PgwardenError(
                    "pgwarden: the audit log did not confirm the login in time; try again",
                    sqlstate=sqlstate.INTERNAL_ERROR,
                ) from exc


def _session_info(
    conn: ClientConnection, login: Login, upstream: UpstreamConnection, ctx: ProxyContext
) -> SessionInfo:
    return SessionInfo(
        session_id=ctx.registry.new_session_id(), user=login.user, target=login.target,
        access_level=AccessLevelName(login.grant.access_level), grant_id=login.grant.request_id,
        upstream_role=upstream.role, client_address=conn.source, client_tls=conn.tls,
        application_name=login.application_name,
        started_at=ctx.clock.now(), grant_ends_at=login.grant.ends_at,
        backend_process_id=upstream.backend_key.process_id,
    )  # fmt: skip


def _release(session: Session, source: str, ctx: ProxyContext) -> None:
    ctx.registry.remove(session)
    ctx.admission.release(Stage.LIVE, source)


def _upstream_handle(
    login: Login, upstream: UpstreamConnection, ctx: ProxyContext
) -> UpstreamHandle:
    async def reap() -> bool:
        target = ctx.policy().targets.get(login.target)
        if target is None:
            log.error("backend %d outlived its session; its target is gone from the policy",
                      upstream.backend_key.process_id)  # fmt: skip
            return False
        context = ctx.upstream_ssl_context(target.upstream)
        return await terminate_backend(target, upstream.backend_key.process_id, context)

    pool = ctx.upstream_pool
    give_back = (lambda: pool.give_back(upstream)) if pool is not None else None
    return UpstreamHandle(
        cancel=lambda: _cancel_upstream(upstream), terminate_backend=reap, give_back=give_back
    )


def _cancel_upstream(upstream: UpstreamConnection) -> asyncio.Task[bool]:
    """Send a CancelRequest to the backend on a fresh connection, in the background."""
    task = asyncio.get_running_loop().create_task(upstream.cancel())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return task


# Fire-and-forget tasks need a strong reference until they finish (asyncio keeps only weak ones).
_BACKGROUND: set[asyncio.Task[bool]] = set()


async def forward_cancel(request: CancelRequest, ctx: ProxyContext) -> None:
    """A CancelRequest with one of our keys cancels that session's running query; no reply.

    The client's cancel connection is closed only once the database has taken the cancel, as
    PostgreSQL closes it only once it has signalled the backend: a client that waits for the
    close before its next statement (libpq, asyncpg) must not have that statement cancelled.
    A key another worker issued goes to that worker, which checks it the same way (there the
    close does not wait). A key another replica issued (its slot) goes to that replica, over
    the network, and the close waits for that replica's (proxy/cluster/peers.py)."""
    slot = ctx.registry.replica_slot(request.secret_key)
    if slot != ctx.registry.slot:
        if slot is not None and ctx.other_replicas is not None:
            await ctx.other_replicas.forward_cancel(slot, request)
        return
    owner = ctx.registry.owner(request.secret_key)
    if owner != ctx.registry.worker:
        if ctx.cancel_elsewhere is not None:
            ctx.cancel_elsewhere(owner, request.process_id, request.secret_key)
        return
    session = ctx.registry.find_by_cancel_key(request.process_id, request.secret_key)
    sent = session.cancel_running_query() if session is not None else None
    if sent is not None:
        # Shielded: a client that hangs up (or the login timeout) must not stop the cancel.
        with contextlib.suppress(Exception):
            await asyncio.shield(sent)
