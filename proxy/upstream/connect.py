"""Logging in to the real database as a grant's service role, cancelling, and signing off.

    connect_upstream(login)
      TCP connect                         host and port from the policy, never from the client
      SSLRequest -> S -> TLS handshake    unless tls is disable; `S` plus any byte is refused
      StartupMessage                      user=role, database, the client's settings (not refused)
      authentication                      upstream_auth: SCRAM-SHA-256, MD5, cleartext over TLS
      greeting                            ParameterStatus*, BackendKeyData, ReadyForQuery
      -> UpstreamConnection               the Peer, ready for the relay

A login may carry pgwarden's `own_settings` (liveness.py: how the database notices a vanished
pgwarden during a query); they replace any client value of the same name. A server that refuses
one of them by name is logged in to again without it, and the `UnsupportedSettings` passed in
remember that for the endpoint. Upstream sockets have TCP keepalive on.

Names come only from the policy and are sent as separate startup parameters; no conninfo string is
ever built (SECURITY.md row 20). Client-supplied settings pass unless `REFUSED_STARTUP_SETTINGS`
names them (row 22; startup_settings.py). The whole login is bounded by `connect_timeout`,
every message it reads is capped (row 19), and any failure aborts the connection and raises one
`UpstreamError`, FATAL, with the upstream's SQLSTATE when it refused us and 08001/08006 otherwise.

`send_cancel_request` and `terminate_upstream` are the session's exit path: both are bounded in
time and never raise (cancellation is best effort).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from proxy.auth import (
    MAX_UPSTREAM_SCRAM_ITERATIONS,
    SaltedPasswordCache,
    tls_server_end_point,
)
from proxy.net.peer import Peer
from proxy.net.tls import UpstreamSslAction, UpstreamTlsError, upstream_ssl_answer
from proxy.policy.models import Upstream, UpstreamTlsMode
from proxy.upstream.liveness import UnsupportedSettings, keep_alive, refused_setting
from proxy.upstream.login import (
    AuthParams,
    LoginFailure,
    LoginRefused,
    MessageStream,
    UpstreamError,
    authenticate,
    receive_greeting,
    upstream_error,
)
from proxy.upstream.startup_settings import (
    REFUSED_STARTUP_SETTINGS,
    StartupParameters,
    allowed_startup_parameters,
    fold,
    refused_startup_setting,
)
from proxy.wire import (
    BackendKeyData,
    CancelRequest,
    NoticeResponse,
    ParameterStatus,
    ProtocolError,
    SSLRequest,
    StartupMessage,
    Terminate,
    TransactionStatus,
    check_database_name,
    check_user_name,
    encode,
)
from proxy.wire.sqlstate import INTERNAL_ERROR

__all__ = [
    "DEFAULT_CANCEL_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TERMINATE_TIMEOUT",
    "REFUSED_STARTUP_SETTINGS",
    "StartupParameters",
    "UnsupportedSettings",
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamLogin",
    "allowed_startup_parameters",
    "connect_upstream",
    "refused_startup_setting",
    "send_cancel_request",
    "terminate_upstream",
]

logger = logging.getLogger(__name__)

# The whole login (connect, TLS, authentication, greeting): a healthy server on a LAN answers in
# milliseconds; 10 s tolerates a slow network without letting a stalled upstream hold a slot.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
# Connect, send the 16 bytes and wait for the server to close: best effort, so short.
DEFAULT_CANCEL_TIMEOUT: Final = 5.0
# Terminate then close: the backend ends at once; past this we abort the socket.
DEFAULT_TERMINATE_TIMEOUT: Final = 1.0


@dataclass(frozen=True, slots=True)
class UpstreamLogin:
    """Where and as whom to log in. Every field comes from the policy, except the already
    client's `startup_parameters` (refused ones filtered again here). `target` names the database in
    client-facing errors (never the host); `server_hostname` is what verify-full checks."""

    host: str
    port: int
    database: str
    role: str
    password: str = field(repr=False)
    tls_mode: UpstreamTlsMode
    server_hostname: str | None = None
    startup_parameters: StartupParameters = ()
    max_scram_iterations: int = MAX_UPSTREAM_SCRAM_ITERATIONS
    target: str = ""
    # pgwarden's own settings for this connection (liveness.py); they replace the client's.
    own_settings: StartupParameters = ()

    def __post_init__(self) -> None:
        # Postgres would truncate a 64-byte name or read an empty database as "same as user":
        # the policy must name exactly what we log in to (rows 6 and 21).
        try:
            check_user_name(self.role)
            check_database_name(self.database)
        except ProtocolError as exc:
            raise ValueError(f"invalid upstream login: {exc.message}") from None
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid upstream port {self.port}")
        if self.max_scram_iterations < 1:
            raise ValueError("max_scram_iterations must be at least 1")

    @classmethod
    def for_upstream(
        cls,
        upstream: Upstream,
        *,
        role: str,
        password: str,
        target: str,
        startup_parameters: Iterable[tuple[str, str]] = (),
        own_settings: StartupParameters = (),
    ) -> UpstreamLogin:
        """The login to a policy `Upstream` as `role` (the caller has read the password)."""
        return cls(
            upstream.host, upstream.port, upstream.database, role, password, upstream.tls,
            server_hostname=upstream.host,
            startup_parameters=allowed_startup_parameters(startup_parameters), target=target,
            own_settings=own_settings,
        )  # fmt: skip

    @property
    def client_parameters(self) -> StartupParameters:
        """The client's settings that go upstream: allowed, and not one of pgwarden's own."""
        own = {fold(name) for name, _ in self.own_settings}
        allowed = allowed_startup_parameters(self.startup_parameters)
        return tuple(pair for pair in allowed if fold(pair[0]) not in own)

    @property
    def display_name(self) -> str:
        return self.target or self.database


@dataclass(frozen=True, slots=True)
class UpstreamConnection:
    """A logged-in upstream connection, ready for the relay.

    `greeting` is what the client must see after its AuthenticationOk, as the server sent it and
    in order (ParameterStatus, NoticeResponse); `messages` is the same, decoded. BackendKeyData is
    kept apart: pgwarden gives the client its own key. `pending` holds bytes the server sent after
    ReadyForQuery (normally none): the relay forwards them before calling `peer.start_relay`.
    The endpoint fields are what `cancel()` needs to reach this backend again.
    """

    peer: Peer
    greeting: tuple[bytes, ...]
    messages: tuple[ParameterStatus | NoticeResponse, ...]
    backend_key: BackendKeyData = field(repr=False)
    ready_status: TransactionStatus
    encrypted: bool
    host: str
    port: int
    role: str
    tls_mode: UpstreamTlsMode
    server_hostname: str | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    pending: bytes = b""

    @property
    def parameters(self) -> dict[str, str]:
        """The server's reported settings (the last report of each wins)."""
        return {m.name: m.value for m in self.messages if isinstance(m, ParameterStatus)}

    @property
    def server_version(self) -> str | None:
        return self.parameters.get("server_version")

    async def cancel(self, *, timeout: float = DEFAULT_CANCEL_TIMEOUT) -> bool:
        """`send_cancel_request` to this backend, with the TLS settings of the login."""
        return await send_cancel_request(
            self.host, self.port, self.backend_key, tls_mode=self.tls_mode,
            ssl_context=self.ssl_context, server_hostname=self.server_hostname, timeout=timeout,
        )  # fmt: skip


async def connect_upstream(
    login: UpstreamLogin,
    *,
    scram_cache: SaltedPasswordCache | None = None,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    unsupported: UnsupportedSettings | None = None,
) -> UpstreamConnection:
    """Log in to the upstream. Raises only UpstreamError (and CancelledError if cancelled).

    `ssl_context` is required unless `login.tls_mode` is disable (see proxy/net/tls.py).
    `unsupported`: what each endpoint is known to refuse of `login.own_settings` (kept by the
    caller across logins); a refusal naming one of them is retried without it, once per setting.
    """
    known = unsupported if unsupported is not None else UnsupportedSettings()
    endpoint = (login.host, login.port)
    for _ in login.own_settings:  # bounded: each retry drops one more of them
        try:
            return await _connect(login, known.of(endpoint), scram_cache, ssl_context,
                                  connect_timeout)  # fmt: skip
        except _RefusedSetting as refused:
            known.add(endpoint, refused.name)
    # Each of them was refused in turn: the last try sends none (and so cannot be refused one).
    every = frozenset(name for name, _ in login.own_settings)
    return await _connect(login, every, scram_cache, ssl_context, connect_timeout)


class _RefusedSetting(Exception):
    """The server refused one of pgwarden's own settings by name: log in again without it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


async def _connect(
    login: UpstreamLogin,
    without: frozenset[str],
    scram_cache: SaltedPasswordCache | None,
    ssl_context: ssl.SSLContext | None,
    connect_timeout: float,
) -> UpstreamConnection:
    channel = _Channel(login.host, login.port, login.tls_mode, login.server_hostname)
    own = tuple(pair for pair in login.own_settings if pair[0] not in without)
    try:
        startup = _startup_packet(login, own)  # before any I/O: a bad packet sends nothing
        async with asyncio.timeout(connect_timeout):
            peer = await channel.open(ssl_context)
            return await _log_in(channel, peer, startup, login, scram_cache)
    except BaseException as exc:
        channel.abort()
        if not isinstance(exc, Exception):
            raise  # cancellation: the caller is going away, nothing to report
        if isinstance(exc, LoginRefused) and (
            name := refused_setting(exc.sqlstate, exc.message, (n for n, _ in own))
        ):
            raise _RefusedSetting(name) from exc
        error = upstream_error(exc, login.display_name, login.role, connect_timeout)
        logger.warning(
            "upstream login to %r as %r failed: %s [%s] (%r)",
            login.display_name, login.role, error.message, error.sqlstate, error.detail,
        )  # fmt: skip
        raise error from exc


async def _log_in(
    channel: _Channel,
    peer: Peer,
    startup: bytes,
    login: UpstreamLogin,
    cache: SaltedPasswordCache | None,
) -> UpstreamConnection:
    peer.write(startup)
    stream = MessageStream(peer)
    verified = channel.encrypted and login.tls_mode is UpstreamTlsMode.VERIFY_FULL
    params = AuthParams(
        login.role, login.password, verified, login.max_scram_iterations,
        channel_binding=channel.binding_data(), cache=cache,
    )  # fmt: skip
    await authenticate(stream, params)
    greeting = await receive_greeting(stream)
    return UpstreamConnection(
        peer, greeting.frames, greeting.messages, greeting.backend_key, greeting.ready_status,
        channel.encrypted, login.host, login.port, login.role, login.tls_mode,
        login.server_hostname, channel.ssl_context, pending=stream.take_unconsumed(),
    )  # fmt: skip


def _startup_packet(login: UpstreamLogin, own: StartupParameters) -> bytes:
    parameters = (("user", login.role), ("database", login.database), *login.client_parameters)
    return encode(StartupMessage((*parameters, *own)))


class _Channel:
    """A TCP connection to the upstream, encrypted as its TLS mode says; aborts on request."""

    def __init__(
        self, host: str, port: int, tls: UpstreamTlsMode, server_hostname: str | None
    ) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.server_hostname = server_hostname or host
        self.peer: Peer | None = None
        self.encrypted = False
        self.ssl_context: ssl.SSLContext | None = None

    async def open(self, ssl_context: ssl.SSLContext | None) -> Peer:
        if self.tls is not UpstreamTlsMode.DISABLE and ssl_context is None:
            raise LoginFailure(f"no TLS context is configured for the policy's tls: {self.tls}")
        loop = asyncio.get_running_loop()
        try:
            transport, peer = await loop.create_connection(self._new_peer, self.host, self.port)
        except OSError as exc:
            raise LoginFailure("could not connect to the server", detail=str(exc)) from exc
        keep_alive(transport.get_extra_info("socket"))
        if peer.transport is None:
            # connection_made failed (the loop only logged it): the transport is ours to close.
            transport.abort()
            raise LoginFailure(
                "internal error", sqlstate=INTERNAL_ERROR, detail="Peer.connection_made failed"
            )
        if ssl_context is not None and self.tls is not UpstreamTlsMode.DISABLE:
            self.ssl_context = ssl_context
            await self._negotiate_tls(peer, ssl_context)
        return peer

    def _new_peer(self) -> Peer:
        # Kept as soon as it exists, so that a failure at any later point can abort it.
        self.peer = Peer("upstream")
        return self.peer

    async def _negotiate_tls(self, peer: Peer, ssl_context: ssl.SSLContext) -> None:
        peer.write(encode(SSLRequest()))
        # read() hands over everything received: one byte is the only legitimate answer.
        answer = await peer.read()
        try:
            action = upstream_ssl_answer(self.tls, answer)
        except UpstreamTlsError as exc:
            raise LoginFailure(exc.message) from exc
        if action is UpstreamSslAction.START_TLS:
            await self._start_tls(peer, ssl_context)

    async def _start_tls(self, peer: Peer, ssl_context: ssl.SSLContext) -> None:
        assert peer.transport is not None
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                peer.transport, peer, ssl_context, server_hostname=self.server_hostname
            )
        except ssl.SSLCertVerificationError as exc:
            reason = "the server's TLS certificate could not be verified"
            raise LoginFailure(reason, detail=exc.verify_message) from exc
        except ssl.SSLError as exc:
            raise LoginFailure("the TLS handshake with the server failed", detail=str(exc)) from exc
        if transport is None:
            raise LoginFailure("the TLS handshake with the server failed")
        peer.replace_transport(transport)
        self.encrypted = True

    def binding_data(self) -> bytes | None:
        """tls-server-end-point data for SCRAM-SHA-256-PLUS, when TLS shows a usable certificate."""
        if not self.encrypted or self.peer is None or self.peer.transport is None:
            return None
        ssl_object = self.peer.transport.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not certificate:
            return None
        try:
            return tls_server_end_point(certificate)
        except ValueError:
            # OpenSSL accepted a certificate `cryptography` cannot parse: log in without binding.
            logger.warning(
                "upstream %s:%s: unparsable certificate, no channel binding", self.host, self.port
            )
            return None

    def abort(self) -> None:
        if self.peer is not None:
            self.peer.abort()


async def send_cancel_request(
    host: str,
    port: int,
    key: BackendKeyData,
    *,
    tls_mode: UpstreamTlsMode,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = DEFAULT_CANCEL_TIMEOUT,
) -> bool:
    """Ask the upstream to cancel the query of the backend `key` names, on a fresh connection.

    TLS follows `tls_mode` as for a login. True once the server has received the request and
    closed the connection (as Postgres does after acting on it); False on any failure, which is
    logged and never raised: cancellation is best effort and the caller has a fallback.
    """
    channel = _Channel(host, port, tls_mode, server_hostname)
    try:
        async with asyncio.timeout(timeout):
            peer = await channel.open(ssl_context)
            peer.write(encode(CancelRequest(key.process_id, key.secret_key)))
            # Postgres replies nothing and closes once it has signalled the backend.
            await peer.wait_closed()
    except Exception as exc:
        logger.warning("cancel request to %s:%s failed: %r", host, port, exc)
        return False
    finally:
        channel.abort()
    return True


async def terminate_upstream(
    conn: UpstreamConnection, *, timeout: float = DEFAULT_TERMINATE_TIMEOUT
) -> None:
    """Send Terminate and close, waiting at most `timeout` before aborting. Never raises.

    Call it at a message boundary: a Terminate written after part of a relayed message would be
    read as the rest of that message.
    """
    peer = conn.peer
    if peer.is_closed:
        return
    peer.write(encode(Terminate()))
    peer.close()  # flushes what is buffered, then closes (with TLS, after close_notify)
    try:
        async with asyncio.timeout(timeout):
            await peer.wait_closed()
    except TimeoutError:
        logger.info("upstream did not close within %g s after Terminate; aborting", timeout)
    finally:
        peer.abort()
