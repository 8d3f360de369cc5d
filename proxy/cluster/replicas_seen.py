"""The replicas the state store has seen, read for `pgwarden audit verify` (read-only).

Every replica of a PostgreSQL-backed deployment registers itself in the `replicas` table when it
starts, and its row stays after it stops (`stopped_at`), so the table is the list of every
replica that ever wrote an audit chain. The verifier reads it on a connection of its own, in a
read-only transaction: it must never create the schema or take the store's locks, as opening a
`PostgresStore` would. A store made by a pgwarden from before the registry has no such table:
that is `None` ("no registry yet"), not an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

import psycopg

from proxy.grants.pg_connection import configure, connection_info, describe
from proxy.grants.store_watch import StoreError

_TABLE: Final = "replicas"
_ROWS: Final = (
    'SELECT id, started_at, heartbeat_at, stopped_at FROM replicas ORDER BY id COLLATE "C"'
)


class RegistryUnavailable(Exception):
    """The state database could not be read; the message names it (never its password)."""


@dataclass(frozen=True, slots=True)
class ReplicaSeen:
    """One row of the registry: who, and when it was seen."""

    id: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None


@dataclass(frozen=True, slots=True)
class Registry:
    """What the registry holds (`replicas` None: the store has none yet), and where it is."""

    replicas: tuple[ReplicaSeen, ...] | None
    where: str  # the database, as messages name it: no user, no password


def read_registry(dsn: str, schema: str) -> Registry:
    """The registry of the store at `dsn` (a secret), `schema`; RegistryUnavailable if not."""
    try:
        conninfo = connection_info(dsn)
    except StoreError as exc:
        raise RegistryUnavailable(f"cannot read the replica registry: {exc}") from None
    rows = replicas_seen(conninfo, schema)
    return Registry(None if rows is None else tuple(rows), describe(conninfo, schema))


def replicas_seen(conninfo: str, schema: str) -> list[ReplicaSeen] | None:
    """Every replica the registry knows, by id; None if the store has no registry (yet).
    `conninfo` is the DSN with pgwarden's settings (`connection_info`)."""
    try:
        with psycopg.connect(conninfo) as conn:
            conn.read_only = True
            configure(conn, schema)
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (_TABLE,)).fetchone()
            if not exists or not exists[0]:
                return None
            return [ReplicaSeen(*row) for row in conn.execute(_ROWS)]
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RegistryUnavailable(
            f"cannot read the replica registry in {describe(conninfo, schema)}: {reason}"
        ) from None
