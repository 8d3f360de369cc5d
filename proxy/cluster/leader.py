"""The leader: the one replica that does what must be done once (sweep grants, send notifications).

With a PostgreSQL store, the primary process of every replica runs `AdvisoryLeader`: about once
a second, on a connection of its own (not the store's pool, so that no pooled connection ever
holds the lock and no busy pool delays the check), it asks `pg_try_advisory_lock(leader_key)`
(one key per schema, apart from the store's write lock). The session that gets it leads until
it ends: when its process dies, its backend ends and the lock with it, and another replica
takes it at its next try, within a couple of seconds.

Leading is a lease, renewed by each check that the lock is still held (a round trip that sees
it in `pg_locks`). `leading` is true only while the last successful check *began* less than
`LEASE` seconds ago, so a check that fails, or hangs on a vanished network, ends leadership at
once and at the latest `LEASE` after the last contact — before the server can hand the lock to
another: the leader's session tells the server to end it after `IDLE_LIMIT` seconds without a
word from it (`idle_session_timeout`) and to probe a silent peer (TCP keepalives), both longer
than the lease. A lost leader closes its connection (freeing the lock at once if the server
still has it) and tries again at the next tick, like any other replica.

With SQLite there is one server (`SoleLeader`): it always leads. Changes are logged at INFO and
published as `pgwarden_leader` (1/0) through `on_change`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

import psycopg

from proxy.grants.pg_connection import connection_info, describe

log = logging.getLogger(__name__)

INTERVAL: Final = 1.0  # seconds between tries (and checks while leading)
CHECK_TIMEOUT: Final = 2.0  # a check not answered by then has failed
LEASE: Final = 3.0  # leading only while the last good check began less than this long ago
IDLE_LIMIT: Final = 6  # seconds: the server ends the leader's session after this much silence
# Server-side probes of a silent peer: the first after 3 s, then 1 s apart, 3 of them (≥ 6 s).
_SESSION_SETTINGS: Final = (
    ("idle_session_timeout", f"{IDLE_LIMIT}s"),
    ("tcp_keepalives_idle", "3"),
    ("tcp_keepalives_interval", "1"),
    ("tcp_keepalives_count", "3"),
    ("statement_timeout", f"{int(CHECK_TIMEOUT * 1000)}"),
)
_HOLDS = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
    "AND granted AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = %s"
)


class Leadership(Protocol):
    """Whether this process leads now; asked before every duty and every notification sent."""

    @property
    def leading(self) -> bool: ...

    async def run(self) -> None: ...

    async def close(self) -> None: ...


def leader_key(schema: str) -> int:
    """The advisory lock the leader of the store in `schema` holds (a signed 64-bit key; not
    the store's write lock, `pg_schema.lock_key`)."""
    digest = hashlib.sha256(f"pgwarden leader {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class SoleLeader:
    """One server on one SQLite file: it always leads."""

    def __init__(self, on_change: Callable[[bool], None] = lambda leading: None) -> None:
        self._on_change = on_change

    @property
    def leading(self) -> bool:
        return True

    async def run(self) -> None:
        self._on_change(True)

    async def close(self) -> None:
        pass


class AdvisoryLeader:
    """Leads while it holds the schema's leader lock on its own connection (module docstring).

    `monotonic` is the clock's; `on_change(leading)` is told every change, on the loop."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        monotonic: Callable[[], float],
        *,
        on_change: Callable[[bool], None] = lambda leading: None,
        interval: float = INTERVAL,
        lease: float = LEASE,
    ) -> None:
        self._conninfo = connection_info(dsn)
        self.where = describe(self._conninfo, schema)
        self.key = leader_key(schema)
        self._monotonic, self._on_change = monotonic, on_change
        self._interval, self._lease = interval, lease
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._held = False
        self._confirmed = float("-inf")  # when the last good check began (monotonic)

    @property
    def leading(self) -> bool:
        return self._held and self._monotonic() - self._confirmed < self._lease

    async def run(self) -> None:
        """Try (or check) every `interval` seconds until cancelled."""
        self._on_change(False)
        try:
            while True:
                await self.tick()
                await asyncio.sleep(self._interval)
        finally:
            await self.close()

    async def tick(self) -> None:
        """One try: take the lock if free, or confirm that it is still held."""
        began = self._monotonic()
        try:
            held = await asyncio.wait_for(self._check(), CHECK_TIMEOUT)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            await self._drop(f"the state database did not confirm the lock ({reason})")
            return
        if held:
            self._confirmed = began
            if not self._held:
                self._held = True
                log.info("this replica leads now (leader lock on %s)", self.where)
                self._on_change(True)
        elif self._held:  # the session lives but the lock is gone: never ours again silently
            await self._drop("the leader lock is no longer held")

    async def _check(self) -> bool:
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True
            )
            for name, value in _SESSION_SETTINGS:
                await conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        if self._held:
            cursor = await conn.execute(_HOLDS, (self.key,))
        else:
            cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)::int", (self.key,))
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def _drop(self, why: str) -> None:
        """Stop leading (if it did) and close the connection: a lock the server still holds
        for it is freed for the others rather than kept by a session this process cannot use."""
        was = self._held
        self._held = False
        await self._disconnect()
        if was:
            log.info("this replica no longer leads: %s", why)
            self._on_change(False)
        else:
            log.debug("leader lock not tried: %s", why)

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await asyncio.wait_for(conn.close(), CHECK_TIMEOUT)

    async def close(self) -> None:
        """Stop leading and let the lock go (closing the connection ends it)."""
        if self._held:
            self._held = False
            log.info("this replica stops leading (shutting down)")
            self._on_change(False)
        await self._disconnect()
