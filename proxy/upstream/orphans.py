"""At start, end the database backends a previous run of pgwarden left behind.

A pgwarden killed with kill -9 (or an OOM kill, a crash) cannot end its sessions: their backends
run on until PostgreSQL notices the closed socket. With `client_connection_check_interval`
(liveness.py, PostgreSQL 14+) it notices within a second, even during a query; before 14, or in
a session whose client turned the check off (`SET client_connection_check_interval = 0`), a
running query goes on to its end and commits. So before the primary listens, `sweep_orphans`
logs in to each target as its control role and terminates them:

    SELECT pid, usename, application_name, pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE datname = current_database() AND usename = ANY(<the target's mapped roles>) ...

**What identifies them: the roles.** The control role (a member of `pg_signal_backend` only)
sees, of another role's backends, just the pid, role, database and application_name: a custom
setting such as `pgwarden.instance` is invisible to other sessions, and client_addr and
backend_start read NULL without `pg_read_all_stats`. application_name is no mark either: with
`proxy.identity_in_application_name: false` it is the client's own, and any client can `SET` it.
The role is what pgwarden itself chooses, and by the README's rules only pgwarden holds a mapped
role's password and pg_hba.conf lets it log in only from pgwarden's address; every such backend
is pgwarden's. None is this run's, since the sweep runs before this run accepts a client. So an
*installation* here is the set of roles its policy maps: two pgwarden installations must not map
the same role on one database (each would end the other's sessions when it starts).
Backends of roles a previous policy mapped, but the current one does not, are not found.

**Replicas** share their roles, so there the roles are no mark: a replica restarting must not end
the sessions the others hold. Each replica keeps its sessions' backend pids in the shared store
(`proxy/cluster`), and its sweep (`SweepScope`) ends only the pids its earlier life recorded,
of the mapped roles, minus any pid a live replica holds now (a pid reused since). A session that
began in the last second before the crash may not be recorded yet: its backend ends when
PostgreSQL finds its client gone (`liveness.py`), within a second or two.

Bounded: each target gets `SWEEP_TIMEOUT` to log in and terminate, then `EXIT_WAIT` to see them
gone, and all targets together `SWEEP_BUDGET` (an unreachable database delays the start by at
most that, then a WARNING); at most `MAX_ORPHANS_PER_TARGET` per target. Without a control role
a target is skipped (logged). Never raises.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from proxy.net.tls import upstream_ssl_context
from proxy.policy.models import Policy, Target, Upstream
from proxy.upstream.connect import (
    UpstreamConnection,
    UpstreamError,
    UpstreamLogin,
    connect_upstream,
    terminate_upstream,
)
from proxy.upstream.oneshot import QueryFailed, simple_query
from proxy.wire import TEXT_TRUE, RemoteProtocolError

log = logging.getLogger(__name__)

SWEEP_TIMEOUT: Final = 3.0  # seconds per target: log in, terminate, see them gone
SWEEP_BUDGET: Final = 5.0  # seconds for every target together: the start waits at most this
MAX_PARALLEL_SWEEPS: Final = 16  # targets swept at once
MAX_ORPHANS_PER_TARGET: Final = 1000  # more than this many left behind: the rest next start
EXIT_WAIT: Final = 1.0  # seconds to see terminated backends gone (they take milliseconds)
EXIT_POLL_INTERVAL: Final = 0.05  # seconds between looks at whether they are gone
MAX_EXIT_POLLS: Final = int(EXIT_WAIT / EXIT_POLL_INTERVAL)  # EXIT_WAIT ends it first
APPLICATION_NAME: Final = "pgwarden-sweep"

# A superuser's backend cannot be signalled with pg_signal_backend (and a level must never map
# to one); leaving it out keeps one misconfigured role from failing the whole statement.
# $1: the mapped roles (a text array), $2: MAX_ORPHANS_PER_TARGET.
_SWEEP_SQL: Final = (
    "SELECT a.pid, a.usename, a.application_name, pg_terminate_backend(a.pid) "
    "FROM pg_stat_activity a "
    "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() "
    "AND a.usename = ANY($1::text[]) "
    "AND NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = a.usesysid AND r.rolsuper) "
    "LIMIT $2"
)
# A replica's sweep: the same, of these backends only. $3: their pids (an int array).
_SWEEP_PIDS_SQL: Final = _SWEEP_SQL.replace("LIMIT $2", "AND a.pid = ANY($3::int[]) LIMIT $2")
_STILL_THERE_SQL: Final = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])"

SslContextFor = Callable[[Upstream], ssl.SSLContext | None]


@dataclass(frozen=True, slots=True)
class SweepScope:
    """A replica's sweep: on each target, only the backends `left` there by its earlier life,
    never one another replica `holds` now (by target name, then pid)."""

    left: Mapping[str, frozenset[int]]
    holds: Mapping[str, frozenset[int]]

    def pids(self, target: str) -> frozenset[int]:
        return self.left.get(target, frozenset()) - self.holds.get(target, frozenset())


@dataclass(frozen=True, slots=True)
class Orphan:
    """A backend a previous run left on `target`, now terminated."""

    target: str
    process_id: int
    role: str
    application_name: str


def _ssl_context(upstream: Upstream) -> ssl.SSLContext | None:
    return upstream_ssl_context(upstream.tls, upstream.ca_file)


async def sweep_orphans(
    policy: Policy, ssl_context_for: SslContextFor = _ssl_context, scope: SweepScope | None = None
) -> list[Orphan]:
    """Terminate, on every target with a control role, the backends of its mapped roles (those
    of `scope` only, for a replica); the ones terminated. Each is logged at WARNING; a target
    that cannot be swept is logged too."""
    targets = [t for t in policy.targets.values() if _sweepable(t)]
    if scope is not None:
        targets = [t for t in targets if scope.pids(t.name)]
    if not targets:
        return []
    limit = asyncio.Semaphore(MAX_PARALLEL_SWEEPS)

    async def one(target: Target) -> list[Orphan]:
        async with limit:
            pids = None if scope is None else scope.pids(target.name)
            return await _sweep_target(target, ssl_context_for, pids)

    tasks = {asyncio.create_task(one(t)): t for t in targets}
    done, late = await asyncio.wait(tasks, timeout=SWEEP_BUDGET)
    for task in late:
        task.cancel()
        log.warning(
            "target %r not swept for backends a previous run left: out of time (%g s)",
            tasks[task].name, SWEEP_BUDGET,
        )  # fmt: skip
    await asyncio.gather(*late, return_exceptions=True)
    found: dict[tuple[str, int, int], Orphan] = {}
    for task in done:
        upstream = tasks[task].upstream
        for orphan in task.result():  # _sweep_target never raises
            found.setdefault((upstream.host, upstream.port, orphan.process_id), orphan)
    return list(found.values())


def _sweepable(target: Target) -> bool:
    if target.control is None:
        log.info(
            "target %r has no control role: backends a previous run of pgwarden left there "
            "cannot be ended at start", target.name,
        )  # fmt: skip
        return False
    return bool(target.access_levels)


async def _sweep_target(
    target: Target, ssl_context_for: SslContextFor, pids: frozenset[int] | None
) -> list[Orphan]:
    try:
        async with asyncio.timeout(SWEEP_TIMEOUT):
            conn = await _control_login(target, ssl_context_for)
            try:
                orphans = await _terminate_orphans(conn, target, pids)
            except BaseException:
                conn.peer.abort()  # mid-exchange: nothing to say to the server
                raise
    except Exception as exc:  # anything: the start goes on, and says what it could not do
        log.warning(
            "could not end backends a previous run of pgwarden left on target %r: %s",
            target.name, str(exc) or type(exc).__name__,
        )  # fmt: skip
        return []
    try:
        for orphan in orphans:
            log.warning(
                "terminated backend %d (role %r, application_name %r) on target %r: a previous "
                "run of pgwarden left it behind",
                orphan.process_id, orphan.role, orphan.application_name, orphan.target,
            )  # fmt: skip
        if orphans:
            await _wait_gone(conn, [o.process_id for o in orphans])
    finally:
        await terminate_upstream(conn)
    return orphans


async def _control_login(target: Target, ssl_context_for: SslContextFor) -> UpstreamConnection:
    assert target.control is not None
    login = UpstreamLogin.for_upstream(
        target.upstream, role=target.control.role, password=target.control.password.read(),
        target=target.name, startup_parameters=(("application_name", APPLICATION_NAME),),
    )  # fmt: skip
    context = ssl_context_for(target.upstream)
    return await connect_upstream(login, ssl_context=context, connect_timeout=SWEEP_TIMEOUT)


async def _terminate_orphans(
    conn: UpstreamConnection, target: Target, pids: frozenset[int] | None
) -> list[Orphan]:
    roles = sorted({level.role for level in target.access_levels.values()})
    # The role names travel as a value, never as SQL text.
    params = (_text_array(roles), str(MAX_ORPHANS_PER_TARGET))
    if pids is None:
        rows = await simple_query(conn, _SWEEP_SQL, params)
    else:
        listed = "{" + ",".join(str(pid) for pid in sorted(pids)) + "}"  # ints: a safe literal
        rows = await simple_query(conn, _SWEEP_PIDS_SQL, (*params, listed))
    return [
        Orphan(target.name, int(_text(pid)), _text(role), _text(name))
        for pid, role, name, killed in rows
        if killed == TEXT_TRUE
    ]


async def _wait_gone(conn: UpstreamConnection, pids: list[int]) -> None:
    """Until the terminated backends have exited (a backend ends at its next interrupt check,
    within milliseconds), so that none is still there once pgwarden accepts clients; at most
    EXIT_WAIT, then a WARNING (they were signalled: they end at their next check). Never
    raises: they are terminated and reported either way."""
    listed = "{" + ",".join(str(pid) for pid in pids) + "}"  # ints only: a safe array literal
    try:
        async with asyncio.timeout(EXIT_WAIT):
            for _ in range(MAX_EXIT_POLLS):
                rows = await simple_query(conn, _STILL_THERE_SQL, (listed,))
                if rows and rows[0][0] == b"0":
                    return
                await asyncio.sleep(EXIT_POLL_INTERVAL)
    except (TimeoutError, QueryFailed, UpstreamError, OSError, RemoteProtocolError):
        pass
    log.warning("terminated backends %s were not seen gone within %g s", listed, EXIT_WAIT)


def _text_array(items: list[str]) -> str:
    """A PostgreSQL array literal of `items`: each element double-quoted, with backslash and
    double quote escaped (array input syntax), so any name is read back exactly."""
    quoted = ('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items)
    return "{" + ",".join(quoted) + "}"


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", "replace")
