"""The registry's statements: replicas, their sessions and kill orders, on one psycopg connection.

Every function takes an autocommit connection whose `search_path` is the store's schema
(`pg_connection.configure`) and runs its statements in one transaction of its own. Liveness is
judged by the database's clock alone (`now()` against `heartbeat_at`), so clock skew between
hosts never makes a dead replica look live or a live one dead. Registrations are serialized by
a lock on the `replicas` table (self-conflicting, so two replicas starting at once take slots
one after the other); heartbeats, session rows and kill orders take no lock beyond their rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg

from proxy.errors import PgwardenError
from proxy.session.session import SessionInfo

# A replica whose heartbeat is older than this is dead: its sessions ended with it (kill -9,
# a lost host). Ten heartbeats: a slow database or a busy host never makes a live one look dead.
REPLICA_TIMEOUT: Final = 10.0
MAX_SLOTS: Final = 64  # session/registry.py SLOT_BITS
MAX_KILLS_PER_READ: Final = 100  # kill orders carried out per heartbeat, at most
WRITE_AHEAD_TIMEOUT_MS: Final = 1000  # a session's row written ahead: at most this, then skipped


class ReplicaRefused(PgwardenError):
    """This replica may not register (its name is live elsewhere, or every slot is taken)."""


@dataclass(frozen=True, slots=True)
class Registration:
    replica_id: str
    slot: int
    started_at: datetime  # the database's; a heartbeat matches it (the row is still ours)
    # What an earlier life of this replica left (the orphan sweep ends these backends, and only
    # these, upstream/orphans.py), and the backends other live replicas hold (never ended).
    left_behind: tuple[tuple[str, int], ...] = ()  # (target, backend pid)
    held_elsewhere: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class RemoteSession:
    replica_id: str
    live: bool  # False: its replica is gone (stopped or its heartbeat expired)
    info: SessionInfo


@dataclass(frozen=True, slots=True)
class KillOrder:
    id: int
    session_id: str
    message: str
    detail: str


def register(
    conn: psycopg.Connection[Any], replica_id: str, proxy_address: str, api_address: str
) -> Registration:
    """Register `replica_id` with the lowest slot no live replica holds, taking its row over
    (the caller holds the name's lock, registry.NameLock: an earlier holder is dead);
    ReplicaRefused if no slot is free."""
    with conn.transaction():
        conn.execute("LOCK TABLE replicas IN SHARE ROW EXCLUSIVE MODE")
        conn.execute(
            "UPDATE replicas SET slot = NULL WHERE slot IS NOT NULL AND NOT ("
            "stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => %s))",
            (REPLICA_TIMEOUT,),
        )
        free = conn.execute(
            "SELECT s FROM generate_series(0, %s) s WHERE NOT EXISTS "
            "(SELECT 1 FROM replicas WHERE slot = s) ORDER BY s LIMIT 1",
            (MAX_SLOTS - 1,),
        ).fetchone()
        if free is None:
            raise ReplicaRefused(f"{MAX_SLOTS} replicas are running already, the most there can be")
        started = conn.execute(
            "INSERT INTO replicas (id, slot, proxy_address, api_address, started_at, heartbeat_at)"
            " VALUES (%s, %s, %s, %s, now(), now()) ON CONFLICT (id) DO UPDATE SET"
            " slot = EXCLUDED.slot, proxy_address = EXCLUDED.proxy_address,"
            " api_address = EXCLUDED.api_address, started_at = now(), heartbeat_at = now(),"
            " stopped_at = NULL RETURNING started_at",
            (replica_id, free[0], proxy_address, api_address),
        ).fetchone()
        assert started is not None
        # What an earlier life of this replica left: its sessions ended with it (their backends
        # are ended by the orphan sweep, unless a live replica holds that pid now).
        left = conn.execute(
            "DELETE FROM replica_sessions WHERE replica_id = %s RETURNING target, backend_pid",
            (replica_id,),
        ).fetchall()
        held = conn.execute(
            "SELECT s.target, s.backend_pid FROM replica_sessions s JOIN replicas r "
            "ON r.id = s.replica_id WHERE r.stopped_at IS NULL "
            "AND r.heartbeat_at > now() - make_interval(secs => %s)",
            (REPLICA_TIMEOUT,),
        ).fetchall()
        conn.execute(
            "UPDATE session_kills SET done_at = now(), ended = true "
            "WHERE replica_id = %s AND done_at IS NULL",
            (replica_id,),
        )
        conn.execute("DELETE FROM session_kills WHERE done_at < now() - interval '1 day'")
    return Registration(
        replica_id, int(free[0]), started[0],
        tuple((str(t), int(pid)) for t, pid in left), tuple((str(t), int(pid)) for t, pid in held),
    )  # fmt: skip


def own_slot(conn: psycopg.Connection[Any], replica_id: str) -> int | None:
    """The slot the primary of `replica_id` registered (what a worker process looks up)."""
    row = conn.execute(
        "SELECT slot FROM replicas WHERE id = %s AND stopped_at IS NULL", (replica_id,)
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def set_addresses(
    conn: psycopg.Connection[Any], me: Registration, proxy_address: str, api_address: str
) -> None:
    """Once the listeners are bound: where this replica is really reached (port 0 in tests)."""
    conn.execute(
        "UPDATE replicas SET proxy_address = %s, api_address = %s "
        "WHERE id = %s AND started_at = %s",
        (proxy_address, api_address, me.replica_id, me.started_at),
    )


def heartbeat(conn: psycopg.Connection[Any], me: Registration) -> bool:
    """Say this replica is alive; False if another process took its row over since (it looked
    dead: the same name started elsewhere while this one could not reach the database)."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE replicas SET heartbeat_at = now() WHERE id = %s AND started_at = %s "
            "RETURNING slot",
            (me.replica_id, me.started_at),
        ).fetchone()
        if row is None:
            return False
        if row[0] is None:  # our slot was freed while we were silent: take it back if still free
            conn.execute(
                "UPDATE replicas SET slot = %s WHERE id = %s AND NOT EXISTS "
                "(SELECT 1 FROM replicas WHERE slot = %s)",
                (me.slot, me.replica_id, me.slot),
            )
    return True


def write_sessions(
    conn: psycopg.Connection[Any],
    me: Registration,
    gone: list[str] | None,
    new: list[SessionInfo],
) -> None:
    """Delete the rows of sessions `gone` (None: every row of this replica) and add `new`."""
    with conn.transaction():
        if gone is None:
            conn.execute("DELETE FROM replica_sessions WHERE replica_id = %s", (me.replica_id,))
        elif gone:
            conn.execute(
                "DELETE FROM replica_sessions WHERE replica_id = %s AND session_id = ANY(%s)",
                (me.replica_id, gone),
            )
        if new:
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO replica_sessions (replica_id, session_id, user_name, target,"
                    " access_level, grant_id, upstream_role, client_address, client_tls,"
                    " application_name, started_at, grant_ends_at, backend_pid) VALUES"
                    " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(me.replica_id, *_session_row(info)) for info in new],
                )


def write_session_ahead(conn: psycopg.Connection[Any], me: Registration, info: SessionInfo) -> None:
    """One session's row, before it relays (sessions.py); bounded: a login waits for it."""
    with conn.transaction():
        conn.execute(f"SET LOCAL statement_timeout = {WRITE_AHEAD_TIMEOUT_MS}")
        write_sessions(conn, me, [], [info])


def _session_row(info: SessionInfo) -> tuple[object, ...]:
    return (
        info.session_id, info.user, info.target, info.access_level, info.grant_id,
        info.upstream_role, info.client_address, info.client_tls, info.application_name,
        info.started_at, info.grant_ends_at, info.backend_process_id,
    )  # fmt: skip


def _session_info(row: tuple[Any, ...]) -> SessionInfo:
    return SessionInfo(
        session_id=row[0], user=row[1], target=row[2], access_level=row[3], grant_id=row[4],
        upstream_role=row[5], client_address=row[6], client_tls=row[7],
        application_name=row[8], started_at=row[9], grant_ends_at=row[10],
        backend_process_id=row[11],
    )  # fmt: skip


def stop(conn: psycopg.Connection[Any], me: Registration) -> None:
    """A clean stop: no sessions left, the slot free for another, the row kept."""
    with conn.transaction():
        conn.execute("DELETE FROM replica_sessions WHERE replica_id = %s", (me.replica_id,))
        conn.execute(
            "UPDATE replicas SET stopped_at = now(), slot = NULL WHERE id = %s AND started_at = %s",
            (me.replica_id, me.started_at),
        )


def peers(conn: psycopg.Connection[Any], replica_id: str) -> dict[int, str]:
    """slot → proxy address of every other live replica."""
    rows = conn.execute(
        "SELECT slot, proxy_address FROM replicas WHERE slot IS NOT NULL AND id <> %s AND "
        "stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => %s)",
        (replica_id, REPLICA_TIMEOUT),
    ).fetchall()
    return {int(slot): str(address) for slot, address in rows}


def other_sessions(conn: psycopg.Connection[Any], replica_id: str) -> list[RemoteSession]:
    """The sessions of every other live replica."""
    rows = conn.execute(
        "SELECT r.id, s.session_id, s.user_name, s.target, s.access_level, s.grant_id,"
        " s.upstream_role, s.client_address, s.client_tls, s.application_name, s.started_at,"
        " s.grant_ends_at, s.backend_pid"
        " FROM replica_sessions s JOIN replicas r ON r.id = s.replica_id WHERE r.id <> %s AND "
        "r.stopped_at IS NULL AND r.heartbeat_at > now() - make_interval(secs => %s)",
        (replica_id, REPLICA_TIMEOUT),
    ).fetchall()
    return [RemoteSession(row[0], True, _session_info(row[1:])) for row in rows]


def find_session(
    conn: psycopg.Connection[Any], session_id: str, replica_id: str
) -> RemoteSession | None:
    """Session `session_id` of another replica, live or not (a dead one's rows say it was)."""
    row = conn.execute(
        "SELECT r.id, r.stopped_at IS NULL AND r.heartbeat_at > now() - make_interval(secs => %s), "
        "s.session_id, s.user_name, s.target, s.access_level, s.grant_id, s.upstream_role,"
        " s.client_address, s.client_tls, s.application_name, s.started_at, s.grant_ends_at,"
        " s.backend_pid "
        "FROM replica_sessions s JOIN replicas r ON r.id = s.replica_id "
        "WHERE s.session_id = %s AND r.id <> %s ORDER BY 2 DESC LIMIT 1",
        (REPLICA_TIMEOUT, session_id, replica_id),
    ).fetchone()
    return None if row is None else RemoteSession(row[0], bool(row[1]), _session_info(row[2:]))


def order_kill(
    conn: psycopg.Connection[Any],
    holder: str,
    session_id: str,
    *,
    actor: str,
    via: str,
    message: str,
    detail: str,
    channel: str,
) -> int:
    """Ask replica `holder` to end a session; NOTIFY `channel` (its feed wakes it at once)."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO session_kills (session_id, replica_id, ordered_by, ordered_via, message,"
            " detail) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (session_id, holder, actor, via, message, detail),
        ).fetchone()
        conn.execute("SELECT pg_notify(%s, %s)", (channel, holder))
    assert row is not None
    return int(row[0])


def kill_outcome(conn: psycopg.Connection[Any], order: int) -> bool | None:
    """Whether the holder ended the session (True: ended or already gone); None: not done yet."""
    row = conn.execute("SELECT done_at IS NOT NULL, ended FROM session_kills WHERE id = %s",
                       (order,)).fetchone()  # fmt: skip
    if row is None or not row[0]:
        return None
    return bool(row[1])


def pending_kills(conn: psycopg.Connection[Any], me: Registration) -> list[KillOrder]:
    rows = conn.execute(
        "SELECT id, session_id, message, detail FROM session_kills "
        "WHERE replica_id = %s AND done_at IS NULL ORDER BY id LIMIT %s",
        (me.replica_id, MAX_KILLS_PER_READ),
    ).fetchall()
    return [KillOrder(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def finish_kill(conn: psycopg.Connection[Any], order: int, *, ended: bool) -> None:
    conn.execute("UPDATE session_kills SET done_at = now(), ended = %s WHERE id = %s",
                 (ended, order))  # fmt: skip
