"""This replica in the registry: its name, its slot, and the connections the registry uses.

With a PostgreSQL store, the primary process of each server registers it at start
(`join_as_primary`): refused, clearly, if a live replica already has its name (`state.replica`);
a dead one's row is taken over; it gets the lowest slot no live replica holds, which the
session registry puts in every cancel key it makes (proxy/session/registry.py). A worker
process (`proxy.workers`) looks up the slot its primary got (`join_as_worker`): the primary
registers before it starts any worker.

The registry has a small pool of connections of its own (`ReplicaDb`), apart from the store's:
the heartbeat must not wait behind logins and API calls for a pooled connection, and its
statements take none of the store's locks nor touch its change counter. Every call on it
blocks: the callers run it in a thread (the heartbeat's, the API's), never on the event loop,
except the one registration at start, before anything listens.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from proxy.cluster.replica_sql import Registration, ReplicaRefused, own_slot, register
from proxy.config import ServerConfig
from proxy.errors import PgwardenError
from proxy.grants.pg_connection import alive, configure, connection_info

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

POOL_SIZE: Final = 3  # the heartbeat's thread and a couple of API threads at once
# A call waits this long for a connection before it fails (the heartbeat tries again a second
# later; an API call lists only this replica's sessions, or refuses a remote kill).
POOL_TIMEOUT: Final = 3.0


class RegistryUnavailable(PgwardenError):
    """The registry's database could not be used just now."""


class ReplicaDb:
    """The registry's connections: `run(fn, ...)` calls `fn(conn, ...)` on one (blocking)."""

    def __init__(self, dsn: str, schema: str) -> None:
        self._schema = schema
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            connection_info(dsn), kwargs={"autocommit": True}, min_size=0, max_size=POOL_SIZE,
            open=True, configure=self._configure, timeout=POOL_TIMEOUT, name="pgwarden-replicas",
            check=ConnectionPool.check_connection,  # a connection the server ended is replaced
        )  # fmt: skip

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        configure(conn, self._schema)

    def run(
        self,
        fn: Callable[Concatenate[psycopg.Connection[Any], P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """`fn` on a pooled connection; RegistryUnavailable if the database cannot be used."""
        try:
            with self._pool.connection() as conn:
                return fn(conn, *args, **kwargs)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RegistryUnavailable(f"the replica registry cannot be used: {reason}") from exc

    def close(self) -> None:
        self._pool.close()


class NameLock:
    """A session-level advisory lock on the replica's name, held on a connection of its own for
    as long as the replica runs: the database frees it the moment the process dies (its
    connection closes), so a replica restarted at once after a crash takes its name back, while
    a second live server with the same name is refused however fresh or stale its heartbeat."""

    def __init__(self, dsn: str, schema: str, replica_id: str) -> None:
        self._conninfo = connection_info(dsn)
        digest = hashlib.sha256(f"pgwarden replica {schema} {replica_id}".encode()).digest()
        self._key = int.from_bytes(digest[:8], "big", signed=True)
        self._conn: psycopg.Connection[Any] | None = None

    def take(self) -> bool:
        """Hold the lock (blocking); False if another live process holds it."""
        if self._conn is not None and alive(self._conn):
            return True
        self.release()
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
        except psycopg.Error as exc:
            raise RegistryUnavailable(f"the replica registry cannot be used: {exc}") from exc
        if row is None or not row[0]:
            conn.close()
            return False
        self._conn = conn
        return True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()  # the lock ends with the session


@dataclass(frozen=True, slots=True)
class Membership:
    """This process's replica: its name, its slot, and (in the primary) its registration."""

    replica_id: str
    slot: int
    db: ReplicaDb
    registration: Registration | None  # None in a worker process
    name_lock: NameLock | None = None  # the primary's, held while it runs

    def close(self) -> None:
        self.db.close()
        if self.name_lock is not None:
            self.name_lock.release()


def join_as_primary(config: ServerConfig) -> Membership:
    """Register this server (ReplicaRefused, RegistryUnavailable: it must not start)."""
    state = config.state
    assert state.dsn is not None, "a PostgreSQL store has a DSN (config.py)"
    lock = NameLock(state.dsn.read(), state.schema, state.replica)
    if not lock.take():
        raise ReplicaRefused(
            f'replica "{state.replica}" is already running; give each server its own '
            "state.replica, or stop the other one first"
        )
    db = _open(config)
    proxy_address = _address(state.advertise or config.proxy.listen)
    try:
        registration = db.run(register, state.replica, proxy_address, _address(config.api.listen))
    except BaseException:
        db.close()
        lock.release()
        raise
    log.info("replica %s registered (slot %d)", state.replica, registration.slot)
    return Membership(state.replica, registration.slot, db, registration, lock)


def join_as_worker(config: ServerConfig) -> Membership:
    """The slot this server's primary registered with."""
    db = _open(config)
    try:
        slot = db.run(own_slot, config.state.replica)
    except BaseException:
        db.close()
        raise
    if slot is None:
        db.close()
        raise RegistryUnavailable(f'replica "{config.state.replica}" is not registered')
    return Membership(config.state.replica, slot, db, None)


def _open(config: ServerConfig) -> ReplicaDb:
    assert config.state.dsn is not None, "a PostgreSQL store has a DSN (config.py)"
    return ReplicaDb(config.state.dsn.read(), config.state.schema)


def _address(at: Any) -> str:
    """`host:port` (`[v6]:port`) of a ListenAddress, as the registry keeps it."""
    return str(at)
