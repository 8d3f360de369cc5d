"""Copying a SQLite state file into a PostgreSQL state store, and proving the copy whole.

`pgwarden store migrate` (commands/store_migrate.py) moves a one-host state into the database
several servers share. Three steps:

- **The source is a snapshot in memory** (`read_snapshot`). The file is opened read-only and
  copied into an in-memory database with SQLite's backup API: one consistent read. Without a
  `-wal` beside it no process has the file open, and it is read `immutable` (no lock, no side
  file made); with one, a plain read-only open takes the WAL's contents too. The snapshot is
  checked and, if its schema is older, migrated with `open_schema`, the code a server runs at
  start: the file itself is never written, and a foreign or newer file is refused as a server
  refuses it. An empty SQLite file (no pgwarden schema) is refused too.
- **The copy is one PostgreSQL transaction** (`PostgresTarget.copy`) that takes the store's
  write lock (`lock_key`, as every `PostgresStore.write`), refuses a store that holds anything,
  and inserts every table's rows as stored: ids, instants, verifiers, digests and transition
  `seq`s are the values themselves, never decoded and encoded again. The change counter takes
  the file's value.
- **The check runs inside that transaction, before its COMMIT** (`differences`): per table, the
  counts and every row equal; per request, what `StoreTx` reads on each side (the request, its
  approvals, its history, its credential) equal field by field; the API tokens likewise. Any
  difference raises `CopyMismatch` and the transaction rolls back: a partial or wrong copy is
  never committed.

Single sign-on's people and live API sessions come across as they are; its sign-in flows, and
sessions already ended, are left out of the snapshot (`drop_ended`).

`TABLES` names every table and column of the SQLite state; a file or a store whose tables have
one it does not name is refused (`_check_layout`), so that a migration adding one cannot be left
behind by this copy. Tables only PostgreSQL has (the replicas' own bookkeeping) are not touched.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import psycopg

from proxy.grants.pg_connection import PostgresTx, configure, connection_info, describe, roll_back
from proxy.grants.pg_schema import lock_key, migrate
from proxy.grants.store_identity import FLOW_COLUMNS, PERSON_COLUMNS, SESSION_COLUMNS
from proxy.grants.store_schema import REQUEST_COLUMNS, TOKEN_COLUMNS, open_schema, to_us
from proxy.grants.store_sql import SqliteTx
from proxy.grants.store_watch import StoreError

BATCH: Final = 1000  # rows read and sent at a time: memory stays flat whatever the state's size
MAX_DIFFERENCES: Final = 10  # reported; the first already proves the copy wrong


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: str
    key: str  # the ORDER BY that lists its rows alike on both sides (bytewise: COLLATE "C")
    identity: bool = False  # `key` is numbered by the database (AUTOINCREMENT, IDENTITY)


_TRANSITION_COLUMNS = "seq, request_id, action, from_state, to_state, actor, at_us, why"
_OUTBOX_COLUMNS = (
    "id, event_id, destination, kind, body, created_us, attempts, next_attempt_us, "
    "delivered_us, gave_up_us, last_error"
)
TABLES: Final = (
    Table("requests", REQUEST_COLUMNS, "id"),
    Table("approvals", "request_id, approver, at_us, comment", "request_id, approver"),
    Table("credentials", "request_id, verifier, created_us", "request_id"),
    Table("transitions", _TRANSITION_COLUMNS, "seq", identity=True),
    Table("api_tokens", TOKEN_COLUMNS, "id"),
    Table("notifications", _OUTBOX_COLUMNS, "id", identity=True),  # proxy/notify's outbox
    Table("people", PERSON_COLUMNS, "user_name"),  # single sign-on (store_identity.py)
    Table("api_sessions", SESSION_COLUMNS, "digest"),  # the live ones (`drop_ended`)
    Table("sign_in_flows", FLOW_COLUMNS, "digest"),  # none: short-lived (`drop_ended`)
    Table("slack_messages", "request_id, channel, ts", "request_id"),  # proxy/notify (Slack)
    Table("change_counter", "id, value", "id"),  # one row, made with the schema: updated
)
_COPIED: Final = tuple(table for table in TABLES if table.name != "change_counter")


class CopyRefused(StoreError):
    """The target already holds state: nothing was copied."""


class CopyMismatch(StoreError):
    """The copy read back differs from the source: rolled back, nothing was copied."""

    def __init__(self, differences: Sequence[str]) -> None:
        super().__init__("the copy differs from the source: " + "; ".join(differences))
        self.differences = tuple(differences)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The source state, in memory. `version`: the file's schema version before migration;
    `wal`: a WAL file was beside it (a server may still have it open)."""

    path: Path
    conn: sqlite3.Connection
    version: int
    wal: bool

    def counts(self) -> dict[str, int]:
        return table_counts(self.conn)

    def close(self) -> None:
        self.conn.close()


def read_snapshot(path: Path, now: datetime | None = None) -> Snapshot:
    """The state file at `path`, read once into memory and brought to the current schema there;
    StoreError if it is missing or not a pgwarden state file this pgwarden can read. With `now`,
    what has ended by then is left out of the snapshot (`drop_ended`)."""
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        raise StoreError(f"{path} {what}; name pgwarden's SQLite state file (paths.state)")
    if not os.access(path, os.R_OK):
        raise StoreError(
            f"{path} cannot be read by this user (uid {os.geteuid()}); run this as the user "
            "pgwarden runs as"
        )
    memory = sqlite3.connect(":memory:", isolation_level=None)
    try:
        # Without a WAL no process has the file open: read it as it is, taking no lock.
        wal = path.with_name(path.name + "-wal").exists()
        mode = "ro" if wal else "ro&immutable=1"
        with contextlib.closing(
            sqlite3.connect(f"file:{quote(str(path))}?mode={mode}", uri=True)
        ) as source:
            source.backup(memory)
        version: int = memory.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise StoreError(f"{path} is not a pgwarden state file (it holds no pgwarden schema)")
        open_schema(path, memory)  # refuses a foreign or newer file; migrates an older one
        _check_layout(_sqlite_layout(memory), str(path))
        if now is not None:
            drop_ended(memory, now)
    except sqlite3.Error as exc:
        memory.close()
        raise StoreError(f"{path} is not a pgwarden state file ({exc})") from None
    except BaseException:
        memory.close()
        raise
    return Snapshot(path, memory, version, wal)


def drop_ended(memory: sqlite3.Connection, now: datetime) -> None:
    """Leave out of the in-memory snapshot what single sign-on no longer needs: sign-in flows
    (minutes long: a person in the middle of one signs in again) and API sessions that were
    revoked or ended; live sessions and the people are copied, so nobody has to sign in again."""
    memory.execute("DELETE FROM sign_in_flows")
    memory.execute(
        "DELETE FROM api_sessions WHERE revoked_us IS NOT NULL OR expires_us <= ?", (to_us(now),)
    )


class PostgresTarget:
    """The PostgreSQL store the state goes to: one connection, its schema made or migrated."""

    def __init__(self, dsn: str, schema: str) -> None:
        conninfo = connection_info(dsn)
        self.schema, self.where = schema, describe(conninfo, schema)
        try:
            self._conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the state store {self.where}: {_reason(exc)}") from None
        try:
            configure(self._conn, schema)
            migrate(self._conn, schema, self.where)
            _check_layout(self._layout(), self.where)
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"cannot open the state store {self.where}: {_reason(exc)}") from None
        except BaseException:
            self.close()
            raise

    def refuse_unless_empty(self) -> None:
        """CopyRefused if the store holds any request, token or history (say what, and how to
        start from an empty schema)."""
        counts = table_counts(self._conn)
        if any(counts[table.name] for table in _COPIED):
            held = [f"{counts['requests']} requests", f"{counts['api_tokens']} API tokens"]
            if counts["notifications"]:  # the other tables hold nothing without a request
                held.append(f"{counts['notifications']} outbox notifications")
            raise CopyRefused(
                f"{self.where} already holds {', '.join(held[:-1])} and {held[-1]}; the copy "
                "goes only into an empty store. "
                "Name a new schema in state.schema, or, if nothing in this one is needed, drop "
                f'it (DROP SCHEMA "{self.schema}" CASCADE) and run this again'
            )

    def copy(self, snapshot: Snapshot) -> dict[str, int]:
        """Copy `snapshot` in one transaction under the store's write lock, check it before the
        COMMIT, commit; the rows copied per table. CopyRefused, CopyMismatch or a psycopg error
        roll it back."""
        conn = self._conn
        try:
            conn.execute("BEGIN")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(self.schema),))
            self.refuse_unless_empty()  # again, under the lock: another copy may have run
            for table in _COPIED:
                insert_rows(conn, table, _rows(snapshot.conn, table))
                if table.identity:
                    _follow_identity(conn, table, _last_number(snapshot.conn, table))
            (value,) = snapshot.conn.execute("SELECT value FROM change_counter").fetchone()
            conn.execute("UPDATE change_counter SET value = %s WHERE id = 1", (value,))
            found = differences(snapshot.conn, conn)
            if found:
                raise CopyMismatch(found)
        except psycopg.Error as exc:
            roll_back(conn)
            raise StoreError(
                f"the copy into {self.where} failed: {_reason(exc)}; nothing was copied"
            ) from exc
        except BaseException:
            roll_back(conn)
            raise
        self._commit()
        return snapshot.counts()

    def _commit(self) -> None:
        try:
            self._conn.execute("COMMIT")
        except psycopg.Error as exc:
            if exc.sqlstate is not None:  # the server answered: it did not commit
                raise StoreError(
                    f"the copy into {self.where} failed: {_reason(exc)}; nothing was copied"
                ) from exc
            # No answer: the COMMIT may have landed or not. Say so, and how to tell (a copy
            # that landed makes the store non-empty, and a new run refuses).
            raise StoreError(
                f"the COMMIT of the copy into {self.where} got no answer ({_reason(exc)}): "
                "whether it took effect is unknown; run this command again, it refuses if the "
                "copy is there"
            ) from exc

    def _layout(self) -> set[str]:
        """The columns of the tables the copy fills (the tables only PostgreSQL has, such as the
        replicas' own, have nothing in a file to copy)."""
        rows = self._conn.execute(
            "SELECT c.relname, a.attname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
            "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') "
            "AND c.relname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            ([table.name for table in TABLES],),
        )
        return {f"{table}.{column}" for table, column in rows}

    def close(self) -> None:
        self._conn.close()


def insert_rows(conn: psycopg.Connection[Any], table: Table, rows: Iterator[Sequence[Any]]) -> None:
    """Insert `rows` into `table` as they are (a numbered row keeps its number)."""
    overriding = "OVERRIDING SYSTEM VALUE " if table.identity else ""
    marks = ", ".join(["%s"] * len(table.columns.split(",")))
    statement = f"INSERT INTO {table.name} ({table.columns}) {overriding}VALUES ({marks})"
    with conn.cursor() as cursor:
        batch: list[Sequence[Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH:
                cursor.executemany(statement, batch)  # constant SQL
                batch.clear()
        if batch:
            cursor.executemany(statement, batch)


def _last_number(conn: sqlite3.Connection, table: Table) -> int:
    """The last number SQLite gave in `table`: AUTOINCREMENT never gives one again, even once its
    row is deleted (pruned notifications), so neither may PostgreSQL."""
    (highest,) = conn.execute(f"SELECT coalesce(max({table.key}), 0) FROM {table.name}").fetchone()  # noqa: S608
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table.name,)).fetchone()
    return max(int(highest), 0 if row is None else int(row[0]))


def _follow_identity(conn: psycopg.Connection[Any], table: Table, last: int) -> None:
    """The table's next number comes after `last` (explicit values do not move the identity's
    sequence)."""
    if last > 0:
        conn.execute(
            "SELECT setval(pg_get_serial_sequence(%s, %s), %s)", (table.name, table.key, last)
        )


def _rows(conn: sqlite3.Connection, table: Table) -> Iterator[Sequence[Any]]:
    cursor = conn.execute(f"SELECT {table.columns} FROM {table.name} ORDER BY {table.key}")  # noqa: S608 constants
    while batch := cursor.fetchmany(BATCH):
        yield from batch


def table_counts(conn: Any) -> dict[str, int]:
    """Rows per table (`conn`: a sqlite3 or psycopg connection)."""
    return {
        table.name: int(conn.execute(f"SELECT count(*) FROM {table.name}").fetchone()[0])  # noqa: S608
        for table in TABLES
    }


def differences(source: sqlite3.Connection, target: psycopg.Connection[Any]) -> list[str]:
    """What differs between the snapshot and the target (inside the copy's transaction): counts
    and rows per table, then each request and the tokens as `StoreTx` reads them; at most
    `MAX_DIFFERENCES`, empty if they are equal."""
    found: list[str] = []
    theirs = table_counts(target)
    for name, count in table_counts(source).items():
        if theirs[name] != count:
            found.append(f"{name}: {count} rows in the file, {theirs[name]} in PostgreSQL")
    for table in TABLES:
        found.extend(_row_differences(source, target, table))
    found.extend(_read_differences(SqliteTx(source, writable=False), source, target))
    return found[:MAX_DIFFERENCES]


def _row_differences(
    source: sqlite3.Connection, target: psycopg.Connection[Any], table: Table
) -> list[str]:
    """The first row of `table` that differs, value for value (bytes stay bytes). Both sides
    are read as they are compared (PostgreSQL's through a server-side cursor, `BATCH` rows at a
    time): memory stays flat."""
    statement = f"SELECT {table.columns} FROM {table.name} ORDER BY {table.key}"  # noqa: S608
    names = [name.strip() for name in table.columns.split(",")]
    with target.cursor(name=f"pgwarden_compare_{table.name}") as theirs:
        theirs.itersize = BATCH
        theirs.execute(statement)
        pairs = zip(source.execute(statement), theirs, strict=False)
        for ordinal, (mine, copied) in enumerate(pairs, start=1):
            if tuple(mine) != tuple(copied):
                column = next(n for n, a, b in zip(names, mine, copied, strict=True) if a != b)
                # Named, not shown: the value may be a verifier or a token's digest.
                where = f"row {ordinal} ({names[0]} {mine[0]!r})"
                return [f"{table.name}: {where} differs in {column}"]
    return []


def _read_differences(
    ours: SqliteTx, source: sqlite3.Connection, target: psycopg.Connection[Any]
) -> Iterator[str]:
    """Each request, its approvals, history and credential, and the tokens, as read through
    `StoreTx` from each side."""
    theirs = PostgresTx(target, writable=False)
    for (request_id,) in source.execute("SELECT id FROM requests ORDER BY id"):
        for what in ("get_request", "approvals", "history", "credential"):
            mine, copied = getattr(ours, what)(request_id), getattr(theirs, what)(request_id)
            if mine != copied:
                yield f"request {request_id}: {what} differs: {_first_difference(mine, copied)}"
                break
    mine, copied = ours.tokens(), theirs.tokens()
    if mine != copied:
        yield f"API tokens differ: {_first_difference(mine, copied)}"


def _first_difference(mine: object, copied: object) -> str:
    """Where two values read back differ: the field (or item) first, secrets not shown."""
    if isinstance(mine, tuple) and isinstance(copied, tuple):
        if len(mine) != len(copied):
            return f"{len(mine)} in the file, {len(copied)} in PostgreSQL"
        pairs = enumerate(zip(mine, copied, strict=True), start=1)
        index, a, b = next((i, a, b) for i, (a, b) in pairs if a != b)
        return f"item {index}: {_first_difference(a, b)}"
    if is_dataclass(mine) and type(mine) is type(copied):
        names = (f.name for f in fields(mine))
        name = next(n for n in names if getattr(mine, n) != getattr(copied, n))
        return f"{name} differs"  # its value may be a salt or a digest: named, not shown
    return "one side has none" if mine is None or copied is None else "the values differ"


def _check_layout(found: set[str], where: str) -> None:
    """`found` (`table.column`s) is what `TABLES` copies, no more, no less: else the copy would
    leave something behind, and nothing is copied."""
    expected = {f"{t.name}.{c.strip()}" for t in TABLES for c in t.columns.split(",")}
    unknown, missing = sorted(found - expected), sorted(expected - found)
    if unknown or missing:
        raise StoreError(
            f"{where} holds columns the copy does not know ({', '.join(unknown) or 'none'}) or "
            f"lacks some it copies ({', '.join(missing) or 'none'}); its schema is not the one "
            "this pgwarden makes, so nothing is copied"
        )


def _sqlite_layout(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT m.name, c.name FROM sqlite_master m, pragma_table_info(m.name) c "
        "WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite%'"
    )
    return {f"{table}.{column}" for table, column in rows}


def _reason(exc: psycopg.Error) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
