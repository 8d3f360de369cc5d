"""Making the database notice a vanished pgwarden, even in the middle of a query.

A backend reads from its client only between queries: while `SELECT pg_sleep(60); INSERT ...`
runs, PostgreSQL does not notice that pgwarden was killed (its kernel closed the socket) or that
its host vanished (nothing closes it), and the INSERT commits after the grant's end. So every
session's upstream login carries, as startup settings:

    client_connection_check_interval=1s   PostgreSQL 14+: during a query, check the socket every
                                          second; a closed or broken one ends the backend (and its
                                          transaction) at the next check
    tcp_keepalives_idle/interval/count    the database's kernel probes a silent connection, so a
                                          host that vanished is seen as a broken socket (~25 s)

These describe the database's side of the database-pgwarden connection, which the client never
sees, so pgwarden's values replace any the client sent for them (`SESSION_SETTINGS`, applied by
`UpstreamLogin.own_settings`). A server that refuses one (PostgreSQL < 14 does not know
client_connection_check_interval; a platform may refuse a non-zero value) is logged in without
it, and `UnsupportedSettings` remembers that for the endpoint, so only its first login pays.
A client can still `SET` them in its session (any role may; pgwarden does not parse SQL): the
sweep at the next start (orphans.py) is the backstop for that, and for PostgreSQL < 14.

`keep_alive` sets TCP keepalive on pgwarden's own upstream sockets: pgwarden then notices a
database host that vanished, and middleboxes keep a long silent query's connection open.
"""

from __future__ import annotations

import logging
import socket
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

log = logging.getLogger(__name__)

# During a query the backend polls its socket this often (PostgreSQL >= 14): a pgwarden killed
# with kill -9 ends its running queries within about this long. A poll per second per running
# query costs nothing measurable.
CLIENT_CHECK_INTERVAL: Final = "1s"
# TCP keepalive, for both ends of an upstream connection: the first probe after this many
# seconds of silence, then one every KEEPALIVE_INTERVAL, KEEPALIVE_COUNT unanswered probes and
# the connection is broken: a host that vanished is noticed after about 10 + 5 * 3 = 25 s.
KEEPALIVE_IDLE: Final = 10
KEEPALIVE_INTERVAL: Final = 5
KEEPALIVE_COUNT: Final = 3
CHECK_SETTING: Final = "client_connection_check_interval"
SESSION_SETTINGS: Final = (
    (CHECK_SETTING, CLIENT_CHECK_INTERVAL),
    ("tcp_keepalives_idle", str(KEEPALIVE_IDLE)),
    ("tcp_keepalives_interval", str(KEEPALIVE_INTERVAL)),
    ("tcp_keepalives_count", str(KEEPALIVE_COUNT)),
)
# How a server refuses a startup setting: it does not know the name (42704, undefined_object),
# or not that value on this platform (22023, invalid_parameter_value). Messages may be
# translated; the setting's name is quoted in them either way.
REFUSED_SETTING_STATES: Final = frozenset({"42704", "22023"})
# Endpoints remembered (host, port); beyond this the oldest is forgotten and its next login
# learns again (one refused login).
MAX_REMEMBERED_ENDPOINTS: Final = 1024

Endpoint = tuple[str, int]


def refused_setting(sqlstate: str, message: str, sent: Iterable[str]) -> str | None:
    """Which of the settings `sent` a login refusal is about, if it is about one of them."""
    if sqlstate not in REFUSED_SETTING_STATES:
        return None
    return next((name for name in sent if f'"{name}"' in message), None)


class UnsupportedSettings:
    """pgwarden's own settings each upstream endpoint refused, learnt from refused logins.

    Kept until pgwarden restarts (a server upgraded meanwhile goes on without them until then)."""

    def __init__(self, max_endpoints: int = MAX_REMEMBERED_ENDPOINTS) -> None:
        self._max = max_endpoints
        self._refused: OrderedDict[Endpoint, frozenset[str]] = OrderedDict()

    def of(self, endpoint: Endpoint) -> frozenset[str]:
        return self._refused.get(endpoint, frozenset())

    def add(self, endpoint: Endpoint, name: str) -> None:
        """Remember that `endpoint` refuses `name`, and say once what that costs."""
        self._refused[endpoint] = self.of(endpoint) | {name}
        self._refused.move_to_end(endpoint)
        while len(self._refused) > self._max:
            self._refused.popitem(last=False)
        host, port = endpoint
        if name == CHECK_SETTING:
            log.warning(
                "the database at %s:%d refuses %s (PostgreSQL before 14): if pgwarden dies "
                "while a query runs, the query runs on to its end there (README, \"How sessions "
                "end\"); pgwarden logs in without it",
                host, port, name,
            )  # fmt: skip
        else:
            log.warning("the database at %s:%d refuses %s; pgwarden logs in without it",
                        host, port, name)  # fmt: skip


def keep_alive(sock: socket.socket | None) -> None:
    """TCP keepalive on an upstream socket, with the probe timing where the platform has it."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    # Linux and the BSDs name the idle time TCP_KEEPIDLE; macOS calls it TCP_KEEPALIVE.
    idle = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)
    options = (
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, idle, KEEPALIVE_IDLE),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_COUNT),
    )
    try:
        for level, option, value in options:
            if option is not None:
                sock.setsockopt(level, option, value)
    except OSError as exc:  # a help, not a condition of the login
        log.info("TCP keepalive could not be set on an upstream socket: %s", exc)
