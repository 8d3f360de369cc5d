"""From accept to a relayed session: one straight line of named steps.

    client                       pgwarden                                    database
      |-- SSLRequest -------------->|  (nothing else may be buffered: row 8)
      |<-------------- 'S' ---------|  TLS handshake (or 'N' without a certificate)
      |-- StartupMessage ---------->|  user = pgwarden user, database = target
      |<-- AuthenticationSASL ------|  grant looked up; no grant → mock exchange
      |-- SASLInitialResponse ----->|
      |<-- SASLContinue ------------|
      |-- SASLResponse ------------>|  proof checked, grant re-checked (row 16)
      |<-- SASLFinal ---------------|
      |                             |-- StartupMessage (mapped role) ---------->|
      |                             |<------------ SCRAM / MD5 / trust -------->|
      |                             |<-- ParameterStatus*, BackendKeyData, 'Z' -|
      |<-- AuthenticationOk, ParameterStatus*, BackendKeyData (ours), 'Z' ------|
      |<============================ relay ===================================>|

Every step before the relay runs under the login timeout, counted from accept, and holds a
pre-auth slot; the relay holds a live slot. Any error becomes one FATAL ErrorResponse with its
SQLSTATE (internal details go to the log only), then the connection closes. Nothing the client
sends reaches the database before the login and the grant check have passed (row 25): bytes
pipelined behind the password wait in the reader and are forwarded after login.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from proxy.auth import AuthError, InvalidPasswordError, ScramServer
from proxy.errors import PgwardenError
from proxy.policy.decide import Allow
from proxy.policy.models import AccessLevelName, SecretUnavailable, TargetName, UserName
from proxy.policy.requests import ActiveGrant
from proxy.session.admission import Stage
from proxy.session.context import ProxyContext
from proxy.session.control import terminate_backend
from proxy.session.observer import LoginFailure
from proxy.session.peer import Peer, PeerClosed
from proxy.session.session import Session, SessionInfo, UpstreamHandle
from proxy.session.upstream import (
    UpstreamConnection,
    UpstreamError,
    UpstreamLogin,
    allowed_startup_parameters,
    connect_upstream,
)
from proxy.wire import (
    NEED_DATA,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    CancelRequest,
    ErrorResponse,
    GSSENCRequest,
    MalformedCancelRequest,
    MessageReader,
    ReadyForQuery,
    RemoteProtocolError,
    SSLRequest,
    StartupMessage,
    StartupParser,
    decode_sasl_initial_response,
    decode_sasl_response,
    login_names,
    negotiate_protocol_version,
    sqlstate,
)
from proxy.wire.limits import MAX_PREAUTH_MESSAGE_LENGTH

log = logging.getLogger(__name__)

PASSWORD_MESSAGE = ord("p")
# How long a TLS handshake may take: part of the login timeout, but bounded on its own too.
TLS_HANDSHAKE_TIMEOUT = 10.0
# application_name is cut by Postgres at NAMEDATALEN - 1 bytes.
MAX_APPLICATION_NAME_BYTES = 63


@dataclass(eq=False)
class ClientConnection:
    """A client connection during login."""

    peer: Peer
    source: str
    tls: bool = False
    parser: StartupParser = field(default_factory=StartupParser)
    reader: MessageReader = field(
        default_factory=lambda: MessageReader(max_length=MAX_PREAUTH_MESSAGE_LENGTH)
    )


@dataclass(frozen=True, slots=True)
class Login:
    """An authenticated client: who, for which grant, and what it asked of the session."""

    user: UserName
    target: TargetName
    grant: ActiveGrant
    startup: StartupMessage


async def serve_connection(peer: Peer, source: str, ctx: ProxyContext) -> None:
    """Everything that happens on one accepted client connection, until it closes."""
    conn = ClientConnection(peer, source)
    try:
        session = await _log_in(conn, ctx)
    except BaseException as exc:
        _reject(conn, exc)
        if not isinstance(exc, Exception):
            raise  # cancellation and exits propagate once the client has been told
        return
    if session is None:
        conn.peer.close()  # a CancelRequest gets no reply: Postgres just closes, and so do we
        return
    await session.wait_ended()


async def _log_in(conn: ClientConnection, ctx: ProxyContext) -> Session | None:
    """The steps up to the relay, under the login timeout; None for a CancelRequest."""
    try:
        async with asyncio.timeout(ctx.login_timeout):
            request = await negotiate_startup(conn, ctx)
            if isinstance(request, CancelRequest):
                forward_cancel(request, ctx)
                return None
            login = await authenticate(conn, request, ctx)
            upstream = await connect_for(login, ctx)
        return make_ready(conn, login, upstream, ctx)
    finally:
        ctx.admission.release(Stage.PREAUTH, conn.source)


# -- startup and TLS --------------------------------------------------------------------------


async def negotiate_startup(
    conn: ClientConnection, ctx: ProxyContext
) -> StartupMessage | CancelRequest:
    """Answer SSLRequest/GSSENCRequest until the StartupMessage (or a CancelRequest) arrives."""
    asked: set[type] = set()
    while True:
        request = await _next_startup_request(conn)
        if isinstance(request, SSLRequest | GSSENCRequest):
            # One of each at most, and none once TLS is up (as Postgres' ProcessStartupPacket).
            if type(request) in asked or conn.tls:
                raise RemoteProtocolError(
                    f"{type(request).__name__} received twice or on an encrypted connection"
                )
            asked.add(type(request))
        if isinstance(request, SSLRequest):
            await answer_ssl_request(conn, ctx)
        elif isinstance(request, GSSENCRequest):
            _refuse_unencrypted_extra(conn, "GSSENCRequest")
            conn.peer.write(b"N")  # no GSSAPI encryption; the client may go on with SSL or plain
        else:
            if isinstance(request, StartupMessage):
                conn.reader.feed(conn.parser.take_pending_data())
            return request


async def _next_startup_request(
    conn: ClientConnection,
) -> SSLRequest | GSSENCRequest | CancelRequest | StartupMessage:
    while (request := conn.parser.next_message()) is NEED_DATA:
        conn.parser.feed(await conn.peer.read())
    return request


async def answer_ssl_request(conn: ClientConnection, ctx: ProxyContext) -> None:
    """'S' and a TLS handshake when we have a certificate, else 'N'."""
    _refuse_unencrypted_extra(conn, "SSL request")
    if ctx.client_tls is None:
        conn.peer.write(b"N")
        return
    conn.peer.write(b"S")
    transport = conn.peer.transport
    assert transport is not None
    tls_transport = await asyncio.get_running_loop().start_tls(
        transport, conn.peer, ctx.client_tls.context, server_side=True,
        ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
    )  # fmt: skip
    assert tls_transport is not None
    conn.peer.replace_transport(tls_transport)
    conn.tls = True


def _refuse_unencrypted_extra(conn: ClientConnection, what: str) -> None:
    # CVE-2021-23214: bytes sent before our answer would be read as if they had come through the
    # encrypted channel; a man in the middle could inject them. Postgres rejects them; so do we.
    if conn.parser.has_pending_data() or conn.peer.has_buffered_data():
        raise RemoteProtocolError(f"received unencrypted data after {what}")


# -- authentication ---------------------------------------------------------------------------


async def authenticate(conn: ClientConnection, startup: StartupMessage, ctx: ProxyContext) -> Login:
    """SCRAM-SHA-256(-PLUS) against the credential of the user's active grant on the target."""
    if (negotiation := negotiate_protocol_version(startup)) is not None:
        conn.peer.write(negotiation.encode())
    names = login_names(startup)
    user, target = UserName(names.user), TargetName(names.database)
    _require_tls_if_needed(conn, target, ctx)
    grant, refusal = _grant_for_login(conn, user, target, ctx)
    scram = ScramServer(
        user, grant.verifier if grant is not None else None,
        mock_secret=ctx.mock_secret,
        channel_binding=ctx.client_tls.channel_binding if conn.tls and ctx.client_tls else None,
        still_valid=lambda: _grant_still_holds(user, target, grant, ctx),
    )  # fmt: skip
    try:
        await _scram_exchange(conn, scram)
    except (AuthError, RemoteProtocolError) as exc:
        _login_failed(conn, user, target, ctx, refusal=refusal, exc=exc)
        raise
    assert grant is not None  # a mock exchange never succeeds
    log.info("login of %r to %r from %s with grant %s", user, target, conn.source, grant.request_id)
    return Login(user, target, grant, startup)


def _login_failed(
    conn: ClientConnection,
    user: UserName,
    target: TargetName,
    ctx: ProxyContext,
    *,
    refusal: tuple[LoginFailure, str] | None,
    exc: PgwardenError,
) -> None:
    """Count the failure against the throttle, log why, and tell the observers."""
    ctx.throttle.record_failure(user, conn.source)
    if refusal is not None:
        reason, detail = refusal
    elif isinstance(exc, InvalidPasswordError):
        grant_ended = exc.detail is not None and "grant ended" in exc.detail
        reason = LoginFailure.GRANT_ENDED if grant_ended else LoginFailure.WRONG_PASSWORD
        detail = exc.detail or exc.message
    else:
        reason, detail = LoginFailure.PROTOCOL, exc.message
    log.info("login of %r to %r from %s failed: %s (%s)", user, target, conn.source, reason, detail)
    for observer in ctx.observers:
        observer.login_failed(user, target, conn.source, reason, detail)


def _require_tls_if_needed(conn: ClientConnection, target: TargetName, ctx: ProxyContext) -> None:
    known = ctx.policy().targets.get(target)
    if known is not None and known.require_client_tls and not conn.tls:
        # Before any password exchange: a credential must never cross an unencrypted link.
        raise PgwardenError(
            f'pgwarden: access to "{target}" requires an encrypted connection; '
            "connect with sslmode=require (or verify-full)",
            sqlstate=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
        )


def _grant_for_login(
    conn: ClientConnection, user: UserName, target: TargetName, ctx: ProxyContext
) -> tuple[ActiveGrant | None, tuple[LoginFailure, str] | None]:
    """The grant whose credential this login is checked against, or None and why not."""
    if ctx.throttle.is_throttled(user, conn.source):
        return None, (LoginFailure.THROTTLED, "too many failed logins for this user or source")
    decision = ctx.grants.login_decision(user, target, ctx.clock.now())
    if isinstance(decision, Allow):
        return decision.grant, None
    policy = ctx.policy()
    if user not in policy.users:
        return None, (LoginFailure.UNKNOWN_USER, decision.reason)
    if target not in policy.targets:
        return None, (LoginFailure.UNKNOWN_TARGET, decision.reason)
    return None, (LoginFailure.NO_ACTIVE_GRANT, decision.reason)


def _grant_still_holds(
    user: UserName, target: TargetName, grant: ActiveGrant | None, ctx: ProxyContext
) -> bool:
    """Asked at SCRAM's last step: is the same grant, with the same credential, still in force?"""
    if grant is None:
        return False
    decision = ctx.grants.login_decision(user, target, ctx.clock.now())
    return (
        isinstance(decision, Allow)
        and decision.grant.request_id == grant.request_id
        and decision.grant.verifier == grant.verifier
    )


async def _scram_exchange(conn: ClientConnection, scram: ScramServer) -> None:
    conn.peer.write(AuthenticationSASL(tuple(scram.mechanisms())).encode())
    initial = decode_sasl_initial_response(await _password_message(conn))
    if initial.data is None:
        raise RemoteProtocolError("SASLInitialResponse without data")
    server_first = scram.receive_client_first(initial.mechanism, initial.data)
    conn.peer.write(AuthenticationSASLContinue(server_first).encode())
    response = decode_sasl_response(await _password_message(conn))
    server_final = scram.receive_client_final(response.data)
    conn.peer.write(AuthenticationSASLFinal(server_final).encode())


async def _password_message(conn: ClientConnection) -> bytes:
    """The payload of the next message, which must be a 'p' (rows 13 and 25)."""
    while True:
        # Judge the type byte as soon as it arrives, as Postgres does: a second StartupMessage
        # or a Query header must not hold the login open until its claimed body arrives.
        kind = conn.reader.peek_type()
        if kind is not None and kind != PASSWORD_MESSAGE:
            raise RemoteProtocolError(
                f"expected a SASL response, received message type {chr(kind)!r}"
            )
        if (frame := conn.reader.next_message()) is not NEED_DATA:
            return frame.payload
        conn.reader.feed(await conn.peer.read())


# -- upstream and ready -----------------------------------------------------------------------


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
    parameters = allowed_startup_parameters(login.startup.parameters)
    upstream_login = UpstreamLogin.for_upstream(
        target.upstream, role=level.role, password=password, target=login.target,
        startup_parameters=_with_application_name(parameters, login),
    )  # fmt: skip
    try:
        return await connect_upstream(
            upstream_login,
            scram_cache=ctx.scram_cache,
            ssl_context=ctx.upstream_ssl_context(target.upstream),
            connect_timeout=ctx.upstream_connect_timeout,
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
    client_name = dict(parameters).get("application_name", "")
    name = f"pgwarden:{login.user}:{login.grant.request_id}"
    if client_name:
        name = f"{name} {client_name}"
    name = name.encode("utf-8")[:MAX_APPLICATION_NAME_BYTES].decode("utf-8", "ignore")
    others = tuple(pair for pair in parameters if pair[0] != "application_name")
    return (*others, ("application_name", name))


def make_ready(
    conn: ClientConnection, login: Login, upstream: UpstreamConnection, ctx: ProxyContext
) -> Session:
    """Register the session, tell the client it is logged in, and start relaying."""
    if not ctx.admission.try_acquire(Stage.LIVE, conn.source):
        upstream.peer.abort()
        raise PgwardenError(
            "pgwarden: too many sessions; try again later", sqlstate=sqlstate.TOO_MANY_CONNECTIONS
        )
    process_id, secret = ctx.registry.new_cancel_key()
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
        for observer in ctx.observers:
            observer.session_started(session)  # the audit log may refuse: fail closed
    except PgwardenError:
        upstream.peer.abort()
        ctx.admission.release(Stage.LIVE, conn.source)
        raise
    ctx.registry.add(session)
    session.end_listeners.append(lambda s, _e: _release(s, conn.source, ctx))
    greeting = [AuthenticationOk().encode(), *upstream.greeting]
    greeting.append(BackendKeyData(process_id, secret).encode())
    greeting.append(ReadyForQuery(upstream.ready_status).encode())
    conn.peer.write(b"".join(greeting))
    session.start(conn.reader.take_pending_data(), upstream.pending)
    return session


def _session_info(
    conn: ClientConnection, login: Login, upstream: UpstreamConnection, ctx: ProxyContext
) -> SessionInfo:
    return SessionInfo(
        session_id=ctx.registry.new_session_id(), user=login.user, target=login.target,
        access_level=AccessLevelName(login.grant.access_level), grant_id=login.grant.request_id,
        upstream_role=upstream.role, client_address=conn.source, client_tls=conn.tls,
        application_name=login.startup.params.get("application_name", ""),
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

    return UpstreamHandle(cancel=lambda: _cancel_upstream(upstream), terminate_backend=reap)


def _cancel_upstream(upstream: UpstreamConnection) -> None:
    """Send a CancelRequest to the backend on a fresh connection, in the background."""
    task = asyncio.get_running_loop().create_task(upstream.cancel())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


# Fire-and-forget tasks need a strong reference until they finish (asyncio keeps only weak ones).
_BACKGROUND: set[asyncio.Task[bool]] = set()


def forward_cancel(request: CancelRequest, ctx: ProxyContext) -> None:
    """A CancelRequest with one of our keys cancels that session's running query; no reply."""
    session = ctx.registry.find_by_cancel_key(request.process_id, request.secret_key)
    if session is not None:
        session.cancel_running_query()


# -- errors -----------------------------------------------------------------------------------


def _reject(conn: ClientConnection, exc: BaseException) -> None:
    """Tell the client why its connection ends (when the protocol allows it), then close."""
    response = _error_response_for(conn, exc)
    if response is not None:
        conn.peer.write(response.encode())
    conn.peer.close()


def _error_response_for(conn: ClientConnection, exc: BaseException) -> ErrorResponse | None:
    if isinstance(exc, MalformedCancelRequest | PeerClosed):
        return None  # Postgres never answers a cancel; a closed peer cannot hear us
    if isinstance(exc, TimeoutError):
        log.info("login from %s timed out", conn.source)
        return ErrorResponse.fatal(
            sqlstate.QUERY_CANCELED, "pgwarden: canceling authentication due to timeout"
        )
    if isinstance(exc, PgwardenError):
        log.info("connection from %s rejected: %s", conn.source, exc)
        return ErrorResponse.from_error(exc)
    if isinstance(exc, asyncio.CancelledError):
        return ErrorResponse.fatal(sqlstate.ADMIN_SHUTDOWN, "pgwarden is shutting down")
    log.error("unexpected error during login from %s", conn.source, exc_info=exc)
    return ErrorResponse.fatal(sqlstate.INTERNAL_ERROR, "pgwarden: internal error")
