"""Reusing upstream connections: a session's backend, reset, serves the next session of its role.

Opt-in (`upstream_pool: {enabled: true}`), like pgbouncer's session mode with
`server_reset_query = DISCARD ALL`. It saves the database a new backend (fork, authentication,
cache warm-up) and pgwarden an upstream login for every session.

While the pool is on, every upstream login starts *neutral* — only `user`, `database`,
`application_name=pgwarden` and pgwarden's own settings (liveness.py) — and the client's settings
(application_name naming the pgwarden user and grant, client_encoding, DateStyle, ...) are
applied afterwards with `pg_catalog.set_config()`, the values sent as Bind parameters, never as
SQL text. `DISCARD ALL` (whose RESET ALL returns every setting to its *startup* value) therefore
leaves a backend as a fresh neutral login would: no client's settings reach the next client, and
pgwarden's own are back.

A backend is given back only if its session ended with the client's own Terminate, sent alone
while the backend was idle (ReadyForQuery status I, nothing in flight, the stream at a message
boundary), no CancelRequest was ever sent for it (a late cancel must never hit the next session's
query), and `DISCARD ALL` answers exactly CommandComplete then ReadyForQuery I within
`RESET_TIMEOUT`. Anything else, and every ending that enforces access (expiry, revocation, kill),
ends the backend as before. Idle backends are kept per (endpoint, role), at most `max_idle` each,
for at most `idle_timeout` idle and `max_lifetime` in all; a policy reload drops them all.

The trade-off (README, "Connection reuse"): DISCARD ALL resets what a session can see of its own
state (settings, role, prepared statements, portals, temporary tables, advisory locks, LISTEN,
sequence state, cached plans), but not what the backend keeps for itself: libraries loaded with
LOAD, the names (not values) of custom settings, postgres_fdw/dblink connections it cached, its
process id and statistics. Two people sharing an access level share a database role anyway; the
pool lets one of them run in a backend the other used before.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from proxy.config import PoolSettings
from proxy.net.peer import Peer
from proxy.policy.models import UpstreamTlsMode
from proxy.upstream.connect import (
    StartupParameters,
    UpstreamConnection,
    UpstreamLogin,
)
from proxy.upstream.login import (
    LoginFailure,
    LoginRefused,
    MessageStream,
    UpstreamError,
    refusal,
    upstream_error,
)
from proxy.wire import (
    BIND_COMPLETE,
    COMMAND_COMPLETE,
    DATA_ROW,
    NOTICE_RESPONSE,
    NOTIFICATION_RESPONSE,
    PARAMETER_STATUS,
    PARSE_COMPLETE,
    Bind,
    ErrorResponse,
    Execute,
    Frame,
    ParameterStatus,
    Parse,
    Query,
    ReadyForQuery,
    RemoteProtocolError,
    Sync,
    Terminate,
    TransactionStatus,
)

log = logging.getLogger(__name__)

RESET_TIMEOUT = 2.0  # seconds for DISCARD ALL to answer; a backend that takes longer is ended
NEUTRAL_APPLICATION_NAME = "pgwarden"
# Messages the server may send at any time: skipped while reading an answer (NoticeResponse,
# ParameterStatus is tracked, NotificationResponse cannot remain after DISCARD ALL's UNLISTEN *).
_ASYNC_TYPES = frozenset((NOTICE_RESPONSE, NOTIFICATION_RESPONSE))
_SET_CONFIG_ANSWER = (PARSE_COMPLETE, BIND_COMPLETE, DATA_ROW, COMMAND_COMPLETE)
_RESET_ANSWER = (COMMAND_COMPLETE,)
_RESET_TAG = b"DISCARD ALL\0"

Connect = Callable[[UpstreamLogin], Awaitable[UpstreamConnection]]
# What a reset can end with (PeerClosed is an OSError): the backend is then not kept.
_RESET_FAILURES = (LoginRefused, LoginFailure, RemoteProtocolError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class PoolKey:
    """Which backends are interchangeable: same server, database, role and TLS settings."""

    host: str
    port: int
    database: str
    role: str
    tls_mode: UpstreamTlsMode
    server_hostname: str | None

    @classmethod
    def of(cls, login: UpstreamLogin) -> PoolKey:
        return cls(login.host, login.port, login.database, login.role, login.tls_mode,
                   login.server_hostname)  # fmt: skip


@dataclass(slots=True)
class _Idle:
    conn: UpstreamConnection
    neutral: dict[str, str]  # the settings its neutral login reported: what a reset returns to
    born: float  # monotonic time of its login
    since: float  # monotonic time it became idle


@dataclass(frozen=True, slots=True)
class _InUse:
    key: PoolKey
    neutral: dict[str, str]
    born: float


class UpstreamPool:
    """Idle, reset backends per `PoolKey` (see the module docstring)."""

    def __init__(self, settings: PoolSettings, monotonic: Callable[[], float]) -> None:
        self.settings = settings
        self._monotonic = monotonic
        self._idle: dict[PoolKey, deque[_Idle]] = {}
        # Backends in use, by connection; an entry goes away with its connection.
        self._in_use: weakref.WeakKeyDictionary[Peer, _InUse] = weakref.WeakKeyDictionary()
        self.reused = 0  # sessions served by a kept backend

    @property
    def idle_count(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    async def connect(
        self, login: UpstreamLogin, connect: Connect, *, timeout: float
    ) -> UpstreamConnection:
        """A backend for `login`: a kept one if one is usable, else a new neutral login; then
        the client's settings. Raises UpstreamError as `connect_upstream` does.

        At most one kept backend is tried: if it fails, a new login decides (a setting the
        database refuses is then refused with its reason, and costs the pool one backend)."""
        key = PoolKey.of(login)
        if (idle := self._take(key)) is not None:
            try:
                conn = await _apply(idle.conn, login, timeout)
            except BaseException as exc:
                idle.conn.peer.abort()
                if not isinstance(exc, UpstreamError):
                    raise  # cancelled: the caller is going away
            else:
                self._in_use[conn.peer] = _InUse(key, idle.neutral, idle.born)
                self.reused += 1
                return conn
        neutral = (("application_name", NEUTRAL_APPLICATION_NAME),)
        fresh = await connect(replace(login, startup_parameters=neutral))
        born = self._monotonic()
        try:
            conn = await _apply(fresh, login, timeout)
        except BaseException:
            fresh.peer.abort()
            raise
        self._in_use[conn.peer] = _InUse(key, fresh.parameters, born)
        return conn

    async def give_back(self, conn: UpstreamConnection) -> bool:
        """Reset the backend of an ended session and keep it; False if it was ended instead
        (the caller then closes it). The caller has checked that the session ended cleanly."""
        use = self._in_use.pop(conn.peer, None)
        now = self._monotonic()
        if (
            use is None
            or not self.settings.enabled
            or now - use.born >= self.settings.max_lifetime
            or len(self._idle.get(use.key, ())) >= self.settings.max_idle
        ):
            return False
        try:
            statuses = await _reset(conn)
        except _RESET_FAILURES as exc:
            log.info("backend %d not kept: %r", conn.backend_key.process_id, exc)
            return False
        idle = self._idle.setdefault(use.key, deque())
        if len(idle) >= self.settings.max_idle:  # others were given back during the reset
            return False
        # Back to the neutral login's settings, whatever the server chose to report.
        reset = _with_statuses(conn, {**use.neutral, **statuses}, b"")
        idle.append(_Idle(reset, use.neutral, use.born, now))
        return True

    def prune(self) -> None:
        """End idle backends past their idle time or lifetime, or closed by the server."""
        now, settings = self._monotonic(), self.settings
        for key, idle in list(self._idle.items()):
            keep: deque[_Idle] = deque()
            for entry in idle:
                fresh = now - entry.since < settings.idle_timeout
                young = now - entry.born < settings.max_lifetime
                if fresh and young and _usable(entry.conn):
                    keep.append(entry)
                else:
                    _end(entry.conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def clear(self) -> None:
        """End every idle backend (on a policy reload and at shutdown)."""
        idle, self._idle = self._idle, {}
        for entries in idle.values():
            for entry in entries:
                _end(entry.conn)

    def _take(self, key: PoolKey) -> _Idle | None:
        idle = self._idle.get(key)
        now = self._monotonic()
        while idle:
            entry = idle.pop()  # the most recently used: its caches are the warmest
            if _usable(entry.conn) and now - entry.born < self.settings.max_lifetime:
                return entry
            _end(entry.conn)
        return None


def _usable(conn: UpstreamConnection) -> bool:
    # Anything an idle backend sends (a FATAL before it exits, say) makes it unusable.
    return not conn.peer.is_closed and not conn.peer.has_buffered_data()


def _end(conn: UpstreamConnection) -> None:
    conn.peer.write(Terminate().encode())  # the backend exits at once
    conn.peer.close()


async def _apply(
    conn: UpstreamConnection, login: UpstreamLogin, timeout: float
) -> UpstreamConnection:
    """Apply the client's settings with set_config; the greeting then reports them."""
    # Filtered again (row 22); pgwarden's own settings stay as the neutral login set them.
    parameters = login.client_parameters
    calls = ", ".join(
        f"pg_catalog.set_config(${2 * i + 1}, ${2 * i + 2}, false)" for i in range(len(parameters))
    )
    values = tuple(part.encode("utf-8") for pair in parameters for part in pair)
    request = [Parse("", f"SELECT {calls}").encode(), Bind("", "", (), values).encode(),
               Execute("").encode(), Sync().encode()]  # fmt: skip
    stream = MessageStream(conn.peer, conn.pending)
    statuses: dict[str, str] = {}
    try:
        async with asyncio.timeout(timeout):
            if parameters:
                stream.send(b"".join(request))
                statuses = await _answer(stream, _SET_CONFIG_ANSWER)
    except Exception as exc:
        raise upstream_error(exc, login.display_name, login.role, timeout) from exc
    return _with_statuses(conn, {**conn.parameters, **statuses}, stream.take_unconsumed())


async def _reset(conn: UpstreamConnection) -> dict[str, str]:
    """DISCARD ALL; the settings the server reported changing. Raises if the answer is not
    exactly as expected or more follows it."""
    stream = MessageStream(conn.peer)
    async with asyncio.timeout(RESET_TIMEOUT):
        stream.send(Query("DISCARD ALL").encode())
        statuses = await _answer(stream, _RESET_ANSWER, tag=_RESET_TAG)
    if stream.take_unconsumed():
        raise LoginFailure("the server sent more after DISCARD ALL")
    return statuses


async def _answer(
    stream: MessageStream, expected: tuple[int, ...], *, tag: bytes = b""
) -> dict[str, str]:
    """Read up to ReadyForQuery; the other messages must be exactly `expected` (async ones
    aside). Returns the ParameterStatus reports seen. Raises LoginRefused / LoginFailure."""
    seen: list[int] = []
    statuses: dict[str, str] = {}
    while True:
        frame = await stream.receive_frame()
        if frame.type == PARAMETER_STATUS:
            status = ParameterStatus.decode(frame.payload)
            statuses[status.name] = status.value
        elif frame.type in _ASYNC_TYPES:
            continue
        elif frame.type == ReadyForQuery.TYPE:
            return _checked(frame, seen, expected, statuses)
        elif frame.type == ErrorResponse.TYPE:
            raise refusal(ErrorResponse.decode(frame.payload))
        else:
            if tag and frame.type == COMMAND_COMPLETE and frame.payload != tag:
                raise LoginFailure("the server's answer to the reset was not DISCARD ALL")
            seen.append(frame.type)


def _checked(
    frame: Frame, seen: list[int], expected: tuple[int, ...], statuses: dict[str, str]
) -> dict[str, str]:
    if tuple(seen) != expected:
        raise LoginFailure("the server's answer had unexpected messages")
    if ReadyForQuery.decode(frame.payload).status is not TransactionStatus.IDLE:
        raise LoginFailure("the server is not idle after the exchange")
    return statuses


def _with_statuses(
    conn: UpstreamConnection, parameters: dict[str, str], pending: bytes
) -> UpstreamConnection:
    """The connection with a greeting of these settings (ParameterStatus only; notices from the
    original login are not repeated)."""
    reports = [_report(name, value) for name, value in parameters.items()]
    messages = tuple(message for message, _ in reports)
    greeting = tuple(frame for _, frame in reports)
    return replace(conn, greeting=greeting, messages=messages,
                   ready_status=TransactionStatus.IDLE, pending=pending)  # fmt: skip


@functools.lru_cache(maxsize=1024)
def _report(name: str, value: str) -> tuple[ParameterStatus, bytes]:
    # The same dozen settings are reported to every session: encode each value once.
    message = ParameterStatus(name, value)
    return message, message.encode()


__all__ = ["PoolKey", "PoolSettings", "StartupParameters", "UpstreamPool"]
