"""The PostgreSQL state store's schema: versioned migrations, applied under an advisory lock.

The tables are those of the SQLite store (`store_schema.py`), so that the same SQL
(`store_sql.py`) runs on both: instants and durations as `bigint` microseconds (round trips are
exact, as in SQLite), names as `text COLLATE "C"` (SQLite's BINARY: equality and order by bytes,
whatever the database's default collation), the token digest as `bytea`. They live in one
schema of their own (`pgwarden` unless configured), which a connection puts alone on its
`search_path`.

Migration *n* (1-based) takes the schema from version n-1 to n; `schema_version` has one row per
migration applied. Append new migrations; never edit one released. `migrate` runs in one
transaction that first takes the store's write lock (`pg_advisory_xact_lock(lock_key(schema))`,
the lock every write transaction takes), so replicas starting together apply each migration once
and the others wait, then find it done; DDL is transactional in PostgreSQL, so a migration that
fails leaves nothing half made. A schema whose version is newer than this code knows is refused
(a newer pgwarden wrote it), and so is a schema that holds tables but no `schema_version` (not
ours).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Final

import psycopg
from psycopg import sql

from proxy.grants.pg_connection import quoted
from proxy.grants.replica_schema import REPLICA_MIGRATIONS
from proxy.grants.store_identity_schema import POSTGRES_MIGRATION as IDENTITY_POSTGRES_MIGRATION
from proxy.grants.store_schema import OUTBOX_DUE_INDEX
from proxy.grants.store_watch import StoreError

APPLICATION: Final = "pgwarden"
_STATES = "('pending', 'active', 'denied', 'cancelled', 'lapsed', 'expired', 'revoked')"

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: SQLite's migrations 1 and 2 in one: requests, approvals, credentials, history, the
    # change counter, API tokens.
    (
        f"""CREATE TABLE requests (
            id text COLLATE "C" PRIMARY KEY,
            requester text COLLATE "C" NOT NULL,
            target text COLLATE "C" NOT NULL,
            access_level text COLLATE "C" NOT NULL,
            requested_us bigint NOT NULL,
            duration_us bigint NOT NULL CHECK (duration_us > 0),
            reason text NOT NULL,
            state text COLLATE "C" NOT NULL CHECK (state IN {_STATES}),
            created_us bigint NOT NULL,
            activated_us bigint,
            ends_us bigint,
            closed_us bigint,
            closed_by text COLLATE "C",
            close_reason text,
            CHECK ((activated_us IS NULL) = (ends_us IS NULL)),
            CHECK (state <> 'active' OR activated_us IS NOT NULL)
        )""",
        "CREATE INDEX requests_by_login ON requests (requester, target, state)",
        "CREATE INDEX requests_by_state ON requests (state, ends_us, created_us)",
        "CREATE INDEX requests_by_created ON requests (created_us)",
        """CREATE TABLE approvals (
            request_id text COLLATE "C" NOT NULL REFERENCES requests (id),
            approver text COLLATE "C" NOT NULL,
            at_us bigint NOT NULL,
            comment text NOT NULL,
            UNIQUE (request_id, approver)
        )""",
        # Only the SCRAM verifier of a temporary password, never the password.
        """CREATE TABLE credentials (
            request_id text COLLATE "C" PRIMARY KEY REFERENCES requests (id),
            verifier text NOT NULL,
            created_us bigint NOT NULL
        )""",
        f"""CREATE TABLE transitions (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            request_id text COLLATE "C" NOT NULL REFERENCES requests (id),
            action text COLLATE "C" NOT NULL,
            from_state text COLLATE "C" CHECK (from_state IS NULL OR from_state IN {_STATES}),
            to_state text COLLATE "C" NOT NULL CHECK (to_state IN {_STATES}),
            actor text COLLATE "C" NOT NULL,
            at_us bigint NOT NULL,
            why text NOT NULL
        )""",
        "CREATE INDEX transitions_by_request ON transitions (request_id, seq)",
        """CREATE TABLE change_counter (
            id integer PRIMARY KEY CHECK (id = 1),
            value bigint NOT NULL
        )""",
        "INSERT INTO change_counter (id, value) VALUES (1, 0)",
        """CREATE TABLE api_tokens (
            id text COLLATE "C" PRIMARY KEY,
            user_name text COLLATE "C" NOT NULL,
            digest bytea NOT NULL UNIQUE CHECK (octet_length(digest) = 32),
            created_us bigint NOT NULL,
            last_used_us bigint,
            revoked_us bigint
        )""",
    ),
    # 2: the notification outbox (SQLite's migration 3).
    (
        """CREATE TABLE notifications (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id text COLLATE "C" NOT NULL,
            destination text COLLATE "C" NOT NULL,
            kind text COLLATE "C" NOT NULL,
            body text NOT NULL,
            created_us bigint NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            next_attempt_us bigint NOT NULL,
            delivered_us bigint,
            gave_up_us bigint,
            last_error text,
            UNIQUE (event_id, destination)
        )""",
        OUTBOX_DUE_INDEX,
    ),
    # 3: the replicas of a cluster, their live sessions, and kill orders between them
    # (proxy/cluster/replica_sql.py). PostgreSQL only: a SQLite store has one server.
    *REPLICA_MIGRATIONS,
    # 4: single sign-on: API sessions, people, sign-in flows (store_identity.py).
    IDENTITY_POSTGRES_MIGRATION,
    # 5: the Slack message of each request (SQLite's migration 5).
    (
        """CREATE TABLE slack_messages (
            request_id text COLLATE "C" PRIMARY KEY,
            channel text COLLATE "C" NOT NULL,
            ts text COLLATE "C" NOT NULL
        )""",
    ),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)

_VERSION_TABLE = """CREATE TABLE schema_version (
    version integer PRIMARY KEY,
    application text NOT NULL CHECK (application = 'pgwarden'),
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def lock_key(schema: str) -> int:
    """The advisory lock of the store in `schema` (a signed 64-bit key; advisory locks are per
    database, so two schemas in one database never wait for each other)."""
    digest = hashlib.sha256(f"pgwarden state store {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def changes_channel(schema: str) -> str:
    """The NOTIFY channel on which the store in `schema` announces its changes (a digest:
    channel names are limited to 63 bytes, schema names are not much shorter)."""
    return f"pgwarden_changes_{lock_key(schema) & 0xFFFFFFFFFFFF:012x}"


def migrate(conn: psycopg.Connection[Any], schema: str, where: str) -> int:
    """Bring `schema` to `SCHEMA_VERSION` (creating it if need be), under the store's lock, in
    one transaction on `conn` (autocommit, `search_path` set to the schema). Returns the version
    found. StoreError for a database pgwarden cannot use; psycopg errors otherwise."""
    conn.execute("BEGIN")  # READ COMMITTED: each statement sees what committed before the lock
    try:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema),))
        _check_encoding(conn, where)
        if conn.execute("SELECT to_regnamespace(%s)", (quoted(schema),)).fetchone() == (None,):
            _create_schema(conn, schema, where)
        found = _version(conn, schema, where)
        if found < SCHEMA_VERSION:
            if found == 0:
                conn.execute(_VERSION_TABLE)
            for version, statements in enumerate(MIGRATIONS[found:], start=found + 1):
                for statement in statements:
                    conn.execute(statement)  # constant DDL, from this module
                conn.execute(
                    "INSERT INTO schema_version (version, application) VALUES (%s, %s)",
                    (version, APPLICATION),
                )
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(psycopg.Error):  # a lost connection has ended it already
            conn.rollback()
        raise
    return found


def _version(conn: psycopg.Connection[Any], schema: str, where: str) -> int:
    """The schema's version (0: empty), if this pgwarden can use it; StoreError otherwise."""
    table = f"{quoted(schema)}.schema_version"
    if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,):
        row = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = to_regnamespace(%s) "
            "AND relkind IN ('r', 'p', 'v', 'm')",
            (quoted(schema),),
        ).fetchone()
        if row is not None and row[0]:
            raise StoreError(
                f"{where} holds tables but no schema_version: it is not a pgwarden state store; "
                "name another schema (state.schema) or another database"
            )
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    version = int(row[0] or 0) if row is not None else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{where} has state schema version {version}, newer than this pgwarden supports "
            f"({SCHEMA_VERSION}); upgrade pgwarden or point it at another schema"
        )
    return version


def _create_schema(conn: psycopg.Connection[Any], schema: str, where: str) -> None:
    try:
        with conn.transaction():  # a savepoint: a refusal is explained, not a dead transaction
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    except psycopg.errors.InsufficientPrivilege:
        raise StoreError(
            f"{where}: the schema {schema} does not exist and this role may not create it; "
            f"create it for the state role: CREATE SCHEMA {quoted(schema)} AUTHORIZATION "
            "<state role>"
        ) from None


def _check_encoding(conn: psycopg.Connection[Any], where: str) -> None:
    """Names and reasons are Unicode: a database in another encoding would refuse or mangle them."""
    row = conn.execute("SELECT current_setting('server_encoding')").fetchone()
    encoding = None if row is None else row[0]
    if isinstance(encoding, bytes):  # psycopg does not decode text from a SQL_ASCII database
        encoding = encoding.decode("ascii", "replace")
    if encoding != "UTF8":
        raise StoreError(
            f"{where} is encoded in {encoding}, not UTF8; create the database with "
            "ENCODING 'UTF8' (pgwarden stores names and reasons in any language)"
        )
