"""Whether this process could listen on some addresses right now, asked before a server starts.

`pgwarden serve` checks its listen addresses before it creates its state file or writes its audit
log, so that an address already in use is refused with a clear message and leaves nothing
behind (`proxy/runtime/preflight.py`). The check binds each address as asyncio's
`create_server` will (every address the host name resolves to, `SO_REUSEADDR`, IPv6 sockets
IPv6-only) and listens, holding every socket until all are bound, so that two of our own
addresses that overlap (`0.0.0.0:8080` and `127.0.0.1:8080`) are caught too; then it lets go.

Another process may still take a port between this check and the real bind: the caller handles
that error too; this check only makes the common case (a port someone already uses) clean.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Sequence

# The probe sockets listen for microseconds; a connection that lands meanwhile is reset.
PROBE_BACKLOG = 1


def listen_problem(addresses: Sequence[tuple[str, str, int]]) -> tuple[str, str] | None:
    """(name, what is wrong) for the first of `(name, host, port)` that cannot be listened on
    now, or None if all can. Port 0 (any free port) always can."""
    with contextlib.ExitStack() as held:
        for name, host, port in addresses:
            if port == 0:
                continue
            problem = _bind_all(held, host, port)
            if problem is not None:
                return name, problem
    return None


def _bind_all(held: contextlib.ExitStack, host: str, port: int) -> str | None:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"cannot resolve the host {host!r} ({exc.strerror})"
    for family, kind, proto, _, address in dict.fromkeys(infos):  # once each, as asyncio
        sock = held.enter_context(socket.socket(family, kind, proto))
        # As asyncio does: a port whose old connections linger in TIME_WAIT is free to reuse.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
            sock.listen(PROBE_BACKLOG)
        except OSError as exc:
            return bind_problem(where, exc)
    return None


def bind_problem(where: str, exc: OSError) -> str:
    """What a failed bind of `where` means for the person who configured it."""
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is already in use by another process; stop it or choose another port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where} is not an address of this host; use one of its addresses, or 0.0.0.0"
    if exc.errno == errno.EACCES:
        return (
            f"{where}: permission denied (ports below 1024 need privileges); "
            "choose a port above 1024"
        )
    return f"cannot listen on {where} ({exc.strerror or exc}); choose another address or port"
