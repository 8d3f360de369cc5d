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
SQLSTATE (internal details go to the log only), then the connection closes. Before the proof,
every refusal is the same 28P01 (no oracle); a proof that holds for the user's grant on another
target is told 3D000, naming that grant and its database. Nothing the client
sends reaches the database before the login and the grant check have passed (row 25): bytes
pipelined behind the password wait in the reader and are forwarded after login.

A connection over an admission cap runs the same line in a *refusing* slot, as far as its
StartupMessage, and is then told FATAL 53300 (refusals.py): Postgres answers the SSLRequest before
it refuses, and clients show its reason only then. A login whose source or (user, source) pair is
throttled is refused right after its StartupMessage with the 28P01 of a wrong password
(throttling.py). A client that leaves before starting up (EOF, Terminate, a failed or abandoned
TLS handshake) is closed without a word and a DEBUG line: nothing is wrong with pgwarden.
"""

from __future__ import annotations

import asyncio
import logging

from proxy.auth import AuthError, ScramServer, ScramVerifier, ServerState
from proxy.errors import PgwardenError
from proxy.grants.decide import Allow
from proxy.grants.requests import ActiveGrant
from proxy.net.peer import Peer, PeerClosed
from proxy.policy.models import TargetName, UserName
from proxy.session.admission import Refusal, Stage
from proxy.session.context import ProxyContext
from proxy.session.login import ClientConnection, Login
from proxy.session.observer import LoginFailure
from proxy.session.opening import connect_for, forward_cancel, make_ready
from proxy.session.refusals import AdmissionRefused
from proxy.session.session import Session
from proxy.session.throttling import (
    LoginThrottled,
    login_abandoned,
    login_failed,
    login_misdirected,
    refuse_if_throttled,
)
from proxy.upstream.connect import refused_startup_setting
from proxy.wire import (
    GSSENC_REFUSED,
    NEED_DATA,
    PASSWORD_MESSAGE,
    SSL_ACCEPTED,
    SSL_REFUSED,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    CancelRequest,
    ErrorResponse,
    GSSENCRequest,
    MalformedCancelRequest,
    RemoteProtocolError,
    Settings,
    SSLRequest,
    StartupMessage,
    TerminateBeforeStartup,
    decode_sasl_initial_response,
    decode_sasl_response,
    login_names,
    negotiate_protocol_version,
    sqlstate,
    startup_settings,
)

log = logging.getLogger(__name__)

# How long a TLS handshake may take: part of the login timeout, but bounded on its own too.
TLS_HANDSHAKE_TIMEOUT = 10.0
# A refused connection has this long (or the login timeout, if shorter) to send its startup
# packet: a real client sends it within milliseconds, and a refusal is not worth holding longer.
REFUSAL_TIMEOUT = 3.0


class StalledWhileRefused(Exception):
    """A connection over a cap sent no startup packet in time: closed without a word."""


# Ways a connection ends before starting up that are worth no answer and no more than a DEBUG
# line: a cancel request (Postgres never answers one), a client that hung up or broke its TLS
# handshake (it cannot hear us), a Terminate (it is leaving), a silent refused connection.
_SILENT_ENDS = (PeerClosed, TerminateBeforeStartup, MalformedCancelRequest, StalledWhileRefused)


async def serve_connection(
    peer: Peer, source: str, ctx: ProxyContext, refusal: Refusal | None = None
) -> None:
    """Everything that happens on one accepted client connection, until it closes.

    With a `refusal` the connection holds a refusing slot, not a pre-auth one, and is told the
    refusal after its startup packet."""
    conn = ClientConnection(peer, source)
    try:
        session = await _log_in(conn, ctx, refusal)
    except BaseException as exc:
        _reject(conn, exc)
        if not isinstance(exc, Exception):
            raise  # cancellation and exits propagate once the client has been told
        return
    if session is None:
        conn.peer.close()  # a CancelRequest gets no reply: Postgres just closes, and so do we
        return
    await session.wait_ended()


async def _log_in(
    conn: ClientConnection, ctx: ProxyContext, refusal: Refusal | None
) -> Session | None:
    """The steps up to the relay, under the login timeout; None for a CancelRequest."""
    if refusal is not None:
        try:
            await _refuse(conn, ctx, refusal)
            return None  # a CancelRequest: forwarded, no reply
        finally:
            ctx.admission.release(Stage.REFUSING, conn.source)
    try:
        async with asyncio.timeout(ctx.login_timeout):
            request = await negotiate_startup(conn, ctx)
            if isinstance(request, CancelRequest):
                await forward_cancel(request, ctx)
                return None
            login = await authenticate(conn, request, ctx)
            upstream = await connect_for(login, ctx)
        return await make_ready(conn, login, upstream, ctx)
    finally:
        ctx.admission.release(Stage.PREAUTH, conn.source)


async def _refuse(conn: ClientConnection, ctx: ProxyContext, refusal: Refusal) -> None:
    """Up to the StartupMessage, then raise AdmissionRefused (a CancelRequest is forwarded)."""
    try:
        async with asyncio.timeout(min(ctx.login_timeout, REFUSAL_TIMEOUT)):
            request = await negotiate_startup(conn, ctx)
    except TimeoutError:
        # Over a cap and silent too: nothing to tell it, and no log line per such connection.
        raise StalledWhileRefused("no startup packet in time") from None
    if isinstance(request, CancelRequest):
        await forward_cancel(request, ctx)  # a Ctrl-C still works while logins are full
        return
    raise AdmissionRefused(refusal, conn.source)


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
            # No GSSAPI encryption; the client may go on with SSL or plain.
            conn.peer.write(GSSENC_REFUSED)
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
        conn.peer.write(SSL_REFUSED)
        return
    conn.peer.write(SSL_ACCEPTED)
    transport = conn.peer.transport
    assert transport is not None
    try:
        tls_transport = await asyncio.get_running_loop().start_tls(
            transport, conn.peer, ctx.client_tls.context, server_side=True,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
        )  # fmt: skip
    except OSError as exc:
        # The client hung up, or does not speak TLS after all (WRONG_VERSION_NUMBER, a port
        # scanner): after our 'S' no plaintext answer can be read, and pgwarden is not at fault.
        raise PeerClosed(f"TLS handshake failed: {exc!r}") from exc
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
    settings = _checked_settings(startup)
    _require_tls_if_needed(conn, target, ctx)
    refuse_if_throttled(conn, user, target, ctx)
    grants, refusal = _grants_for_login(user, target, ctx)
    # No grant here, but one elsewhere: check the proof against it, so that a client that proves
    # its credential is told which database its grant is for (and one that cannot, nothing).
    checked = grants or _grants_elsewhere(user, target, ctx)
    late = _LateGrants(user, target, checked, ctx)
    scram = ScramServer(
        user, [grant.verifier for grant in checked],
        mock_secret=ctx.mock_secret,
        channel_binding=ctx.client_tls.channel_binding if conn.tls and ctx.client_tls else None,
        still_valid=lambda verifier: _grant_still_holds(user, _of(late.all, verifier), ctx),
        late_verifiers=late.verifiers if ctx.grants.caching else None,
    )  # fmt: skip
    try:
        await _scram_exchange(conn, scram)
    except (AuthError, RemoteProtocolError) as exc:
        await login_failed(conn, user, target, ctx, refusal=refusal, exc=exc)
        raise
    except (PeerClosed, asyncio.CancelledError):
        # Hanging up before the first SCRAM message is how psql asks for a password: free.
        # Hanging up or stalling (the login timeout cancels us) after it is abandoning.
        if scram.state is ServerState.AWAITING_CLIENT_FINAL:
            login_abandoned(conn, user, target, ctx)
        raise
    assert scram.matched is not None  # a mock exchange never succeeds
    grant = late.all[scram.matched]
    if not grants:
        assert refusal is not None
        login_misdirected(conn, user, target, ctx, refusal=refusal)
        raise PgwardenError(
            f"pgwarden: your grant {grant.request_id} is for database "
            f'"{grant.target}", not "{target}"',
            sqlstate=sqlstate.INVALID_CATALOG_NAME,
        )
    log.info("login of %r to %r from %s with grant %s", user, target, conn.source, grant.request_id)
    return Login(user, target, grant, startup, settings)


def _checked_settings(startup: StartupMessage) -> Settings:
    """The settings the client asked for, or a FATAL naming the one pgwarden refuses (before
    any password exchange: the answer depends only on what the client sent)."""
    settings = tuple(
        (name, value) for name, value in startup_settings(startup)
        if not (name == "replication" and value.lower() in _FALSE)  # not a replication login
    )  # fmt: skip
    if (refused := refused_startup_setting(settings)) is not None:
        name, why = refused
        raise PgwardenError(
            f'pgwarden: the startup setting "{name}" is refused: {why}; remove it from the '
            "connection's options",
            sqlstate=sqlstate.INSUFFICIENT_PRIVILEGE,
        )
    return settings


# How Postgres spells false for a boolean startup parameter such as `replication`.
_FALSE = frozenset({"false", "off", "no", "0", "f", "n", "of"})


def _require_tls_if_needed(conn: ClientConnection, target: TargetName, ctx: ProxyContext) -> None:
    known = ctx.policy().targets.get(target)
    if known is not None and known.require_client_tls and not conn.tls:
        # Before any password exchange: a credential must never cross an unencrypted link.
        raise PgwardenError(
            f'pgwarden: access to "{target}" requires an encrypted connection; '
            "connect with sslmode=require (or verify-full)",
            sqlstate=sqlstate.INVALID_AUTHORIZATION_SPECIFICATION,
        )


def _grants_for_login(
    user: UserName, target: TargetName, ctx: ProxyContext
) -> tuple[tuple[ActiveGrant, ...], tuple[LoginFailure, str] | None]:
    """The grants whose credentials this login is checked against, or none and why not."""
    decision = ctx.grants.login_decision(user, target, ctx.clock.now())
    if isinstance(decision, Allow):
        return _sharing_a_salt(decision.grants), None
    policy = ctx.policy()
    if user not in policy.users:
        return (), (LoginFailure.UNKNOWN_USER, decision.reason)
    if target not in policy.targets:
        return (), (LoginFailure.UNKNOWN_TARGET, decision.reason)
    return (), (LoginFailure.NO_ACTIVE_GRANT, decision.reason)


def _grants_elsewhere(
    user: UserName, target: TargetName, ctx: ProxyContext
) -> tuple[ActiveGrant, ...]:
    """The user's usable grants on other targets (newest credential first)."""
    now = ctx.clock.now()
    found: list[ActiveGrant] = []
    for other in ctx.policy().targets:
        if other != target:
            decision = ctx.grants.login_decision(user, other, now)
            if isinstance(decision, Allow):
                found.extend(decision.grants)
    found.sort(key=lambda g: (g.credential_issued_at, g.request_id), reverse=True)
    return _sharing_a_salt(tuple(found))


def _sharing_a_salt(grants: tuple[ActiveGrant, ...]) -> tuple[ActiveGrant, ...]:
    """The newest credential's grant and those whose verifiers share its salt: one exchange
    shows one salt. A user's credentials are issued with one salt (lifecycle.py), so this drops
    only a credential issued in a race, or before this rule existed."""
    if not grants:
        return ()
    first = grants[0].verifier
    return tuple(
        g for g in grants
        if (g.verifier.salt, g.verifier.iterations) == (first.salt, first.iterations)
    )  # fmt: skip


class _LateGrants:
    """The grants a login is checked against: those known at its start, then (a replica's
    memory being a moment behind) those the store holds when the proof matched none."""

    def __init__(
        self, user: UserName, target: TargetName, known: tuple[ActiveGrant, ...], ctx: ProxyContext
    ) -> None:
        self._user, self._target, self._ctx = user, target, ctx
        self.all = known

    def verifiers(self) -> list[ScramVerifier]:
        """The verifiers of grants not known at the start (read from the store, always: a mock
        exchange reads too, so that a wrong password costs the same for every user)."""
        now = self._ctx.clock.now()
        decision = self._ctx.grants.login_decision(self._user, self._target, now, fresh=True)
        if not self.all or not isinstance(decision, Allow):
            return []  # a mock exchange: no salt sent that a credential could match
        first = self.all[0].verifier
        new = tuple(
            grant for grant in decision.grants
            if grant not in self.all
            and (grant.verifier.salt, grant.verifier.iterations) == (first.salt, first.iterations)
        )  # fmt: skip
        self.all = self.all + new  # in the order ScramServer appends their verifiers
        return [grant.verifier for grant in new]


def _of(grants: tuple[ActiveGrant, ...], verifier: ScramVerifier) -> ActiveGrant | None:
    return next((grant for grant in grants if grant.verifier == verifier), None)


def _grant_still_holds(user: UserName, grant: ActiveGrant | None, ctx: ProxyContext) -> bool:
    """Asked at SCRAM's last step: is the same grant, with the same credential, still in force?
    Asked of the store itself (`fresh`), not of a replica's memory: a revocation or a new
    credential committed elsewhere a moment ago must not let the old one in (when the store
    cannot be read, its last known state answers, within `state.max_staleness`)."""
    if grant is None:
        return False
    decision = ctx.grants.login_decision(user, grant.target, ctx.clock.now(), fresh=True)
    return isinstance(decision, Allow) and any(
        held.request_id == grant.request_id and held.verifier == grant.verifier
        for held in decision.grants
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


# -- errors -----------------------------------------------------------------------------------


def _reject(conn: ClientConnection, exc: BaseException) -> None:
    """Tell the client why its connection ends (when the protocol allows it), then close."""
    response = _error_response_for(conn, exc)
    if response is not None:
        conn.peer.write(response.encode())
    conn.peer.close()


def _error_response_for(conn: ClientConnection, exc: BaseException) -> ErrorResponse | None:
    if isinstance(exc, _SILENT_ENDS):
        log.debug("connection from %s ended before login: %r", conn.source, exc)
        return None
    if isinstance(exc, AdmissionRefused | LoginThrottled):
        return ErrorResponse.from_error(exc)  # logged, rate-limited, where it was decided
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
