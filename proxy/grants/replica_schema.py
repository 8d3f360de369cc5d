"""The tables of a cluster of replicas, in the PostgreSQL state store (one migration).

- `replicas`: every replica that ever started on this store, kept after it stops, so that
  `audit verify` knows every replica that wrote a chain. A replica is *live* while it has not
  stopped cleanly (`stopped_at`) and its heartbeat is fresh (`proxy/cluster/replica_sql.py`:
  `REPLICA_TIMEOUT`); the database's clock stamps both, so the hosts' clocks never matter.
  `slot` (0..63) is encoded in the cancel keys the replica hands out; it is unique among the
  rows that hold one, and a dead or stopped replica's slot is cleared when another needs it.
- `replica_sessions`: one row per live session of a replica (what `GET /api/v1/sessions`
  shows), written by that replica in batches; a dead replica's rows are ignored (its sessions
  ended with it) and replaced when it registers again.
- `session_kills`: an order, taken by one replica's API, that another end one of its sessions;
  the holder carries it out and marks it done.
"""

from __future__ import annotations

from typing import Final

REPLICA_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE replicas (
            id text COLLATE "C" PRIMARY KEY,
            slot integer UNIQUE CHECK (slot BETWEEN 0 AND 63),
            proxy_address text NOT NULL,
            api_address text NOT NULL,
            started_at timestamptz NOT NULL,
            heartbeat_at timestamptz NOT NULL,
            stopped_at timestamptz
        )""",
        """CREATE TABLE replica_sessions (
            session_id text COLLATE "C" NOT NULL,
            replica_id text COLLATE "C" NOT NULL REFERENCES replicas (id),
            user_name text COLLATE "C" NOT NULL,
            target text COLLATE "C" NOT NULL,
            access_level text COLLATE "C" NOT NULL,
            grant_id text COLLATE "C" NOT NULL,
            upstream_role text COLLATE "C" NOT NULL,
            client_address text NOT NULL,
            client_tls boolean NOT NULL,
            application_name text NOT NULL,
            started_at timestamptz NOT NULL,
            grant_ends_at timestamptz NOT NULL,
            backend_pid integer NOT NULL,
            PRIMARY KEY (session_id, replica_id)
        )""",
        "CREATE INDEX replica_sessions_by_replica ON replica_sessions (replica_id)",
        """CREATE TABLE session_kills (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            session_id text COLLATE "C" NOT NULL,
            replica_id text COLLATE "C" NOT NULL REFERENCES replicas (id),
            ordered_by text COLLATE "C" NOT NULL,
            ordered_via text COLLATE "C" NOT NULL,
            message text NOT NULL,
            detail text NOT NULL,
            ordered_at timestamptz NOT NULL DEFAULT now(),
            done_at timestamptz,
            ended boolean
        )""",
        "CREATE INDEX session_kills_pending ON session_kills (replica_id) WHERE done_at IS NULL",
    ),
)
