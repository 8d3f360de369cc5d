"""How the PostgreSQL state store talks to its database, statement by statement.

`PostgresStore` (pg_store.py) holds the pool and the transactions; this module has what one
connection needs: the libpq settings pgwarden adds to the DSN and the session settings it makes
(`connection_info`, `configure`), how a database is named in messages (`describe`: never the user
or password), what a psycopg error says about the database (`problem_of`, the PostgreSQL
counterpart of store_watch's SQLite codes), store_sql's SQL over psycopg (`PostgresTx`), and
whether an idle connection is still open (`alive`).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import ConnStatus

from proxy.grants.store_sql import SqliteTx
from proxy.grants.store_watch import Problem, StoreError

# Libpq settings unless the DSN gives its own: give up a connection attempt after 5 s, and a
# connection whose sent data goes unacknowledged for 10 s (a host gone without a reset), instead
# of the kernel's minutes; show who this is in pg_stat_activity.
_CONNECTION_DEFAULTS: Final = {
    "connect_timeout": "5",
    "tcp_user_timeout": "10000",
    "application_name": "pgwarden",
}
# Per session: the write lock waits as long as SQLite's busy timeout; no statement runs away; a
# transaction left open by a hung thread is ended by the server, and its lock with it.
_SESSION_SETTINGS: Final = (
    ("lock_timeout", "10s"),
    ("statement_timeout", "30s"),
    ("idle_in_transaction_session_timeout", "60s"),
)
# The server ended the session: an administrator, a crash, a shutdown (they read as unreachable).
SESSION_ENDED: Final = frozenset({"57P01", "57P02", "57P03"})
_BY_SQLSTATE: Final = {
    "25006": Problem.READ_ONLY,  # read_only_sql_transaction: a standby, default read-only
    "42501": Problem.DENIED,  # insufficient_privilege
    "53100": Problem.DISK_FULL,
    "53300": Problem.BUSY,  # too_many_connections
    "55P03": Problem.BUSY,  # lock_not_available: the write lock, past lock_timeout
    "57014": Problem.BUSY,  # query_canceled: statement_timeout
    "58030": Problem.IO_ERROR,
    "XX001": Problem.CORRUPT,  # data_corrupted
    "XX002": Problem.CORRUPT,  # index_corrupted
}


def connection_info(dsn: str) -> str:
    """The DSN with pgwarden's defaults for what it leaves out; StoreError if it does not parse
    (without the parser's message, which may quote the DSN, password included)."""
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.Error:
        raise StoreError("the state DSN is not a libpq connection string or URI") from None
    defaults = {k: v for k, v in _CONNECTION_DEFAULTS.items() if k not in given}
    return make_conninfo(dsn, **defaults)


def configure(conn: psycopg.Connection[Any], schema: str) -> None:
    """A new connection: the store's schema alone on its search path, and the timeouts."""
    for name, value in (("search_path", quoted(schema)), *_SESSION_SETTINGS):
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


def describe(conninfo: str, schema: str) -> str:
    """The database as messages name it: no user, no password."""
    params = conninfo_to_dict(conninfo)
    host, port = params.get("host") or "localhost", params.get("port") or "5432"
    dbname = params.get("dbname") or params.get("user") or "?"
    return f"postgresql://{host}:{port}/{dbname} (schema {schema})"


def problem_of(exc: psycopg.Error) -> Problem | None:
    """What a psycopg error says about the database, or None when it is about the statement
    (a constraint, bad data): the caller's to handle, as with SQLite."""
    state = exc.sqlstate
    if state is None:  # no server answer: connect failed, connection lost, no pooled connection
        return Problem.UNREACHABLE if isinstance(exc, psycopg.OperationalError) else None
    if state.startswith("08") or state in SESSION_ENDED:  # connection failures, shutdowns
        return Problem.UNREACHABLE
    return _BY_SQLSTATE.get(state)


class PostgresTx(SqliteTx):
    """`StoreTx` over a psycopg connection inside an open transaction: store_sql's SQL."""

    def __init__(self, conn: psycopg.Connection[Any], *, writable: bool) -> None:
        super().__init__(_QmarkConnection(conn), writable=writable)


class _QmarkConnection:
    """A psycopg connection that takes store_sql's `?` placeholders."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Any = (), /) -> psycopg.Cursor[Any]:
        return self.conn.execute(_pyformat(sql), parameters)


@functools.lru_cache(maxsize=256)  # bounded: list_requests varies with the policy's scopes
def _pyformat(sql: str) -> str:
    if "%" in sql:  # psycopg would take it for a placeholder
        raise StoreError(f"a statement for the state store contains '%': {sql[:60]!r}")
    return sql.replace("?", "%s")


def alive(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection is still open, in no round trip: libpq reads what has arrived
    without waiting (its socket is non-blocking), and an idle connection has nothing to read
    unless the server ended it (a restart or pg_terminate_backend sends FATAL, then closes). A
    host gone without a word is caught by `tcp_user_timeout` on first use instead."""
    try:
        for _ in range(2):  # the FATAL, then the close
            conn.pgconn.consume_input()  # OperationalError once it reads the close
    except psycopg.OperationalError:
        return False
    return conn.pgconn.status == ConnStatus.OK


def one(conn: psycopg.Connection[Any], sql: str, params: tuple[object, ...] = ()) -> Any:
    """The first column of the first row, or None."""
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def roll_back(conn: psycopg.Connection[Any]) -> None:
    """End an open transaction; a connection already lost has ended it (the pool drops it)."""
    with contextlib.suppress(psycopg.Error):
        conn.rollback()


def quoted(identifier: str) -> str:
    """A quoted SQL identifier, as set_config and to_regnamespace take it."""
    return '"' + identifier.replace('"', '""') + '"'
