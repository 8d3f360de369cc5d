"""A read-only grant cannot write, through pgwarden, against the real server (SECURITY.md 23-24).

pgwarden does not parse SQL: read-only is the upstream role's privileges. So every way of writing
is tried through pgwarden with alice's read-only grant — plain DML, a writable CTE, `nextval()`,
role changes (`SET ROLE`, `set_config('role', ...)`, `SET SESSION AUTHORIZATION`,
`ALTER ROLE ... SUPERUSER`), `BEGIN READ WRITE`, `COPY FROM STDIN`, `COPY TO PROGRAM`, `DO`,
`CREATE TABLE`, `CALL` of a SECURITY INVOKER procedure that writes, writes through the extended
protocol (unnamed and prepared), a FunctionCall message, a large object — and each must fail with
Postgres's own error, leave the database exactly as it was (checked by the superuser before and
after), and leave the session usable.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import pq

from proxy.grants.requests import IssuedCredential
from tests.fixtures.clients import raw_login, superuser_orders, terminate_pgwarden_backends
from tests.fixtures.pgwarden import RO_ROLE, RW_ROLE, RunningPgwarden
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.rawpg import RawPg, error_fields

pytestmark = pytest.mark.integration

INSUFFICIENT_PRIVILEGE = "42501"
READ_ONLY_TRANSACTION = "25006"
PROBE_SEQUENCE = "ro_probe_seq"
PROBE_PROCEDURE = "ro_probe_write"
PROBE_TABLE = "ro_probe_new"
PROGRAM_MARKER = Path("/tmp") / f"pgwarden-ro-probe-{secrets.token_hex(8)}"

Conn = psycopg.Connection[tuple[object, ...]]


@pytest.fixture(scope="module")
def ro_credential(pgwarden: RunningPgwarden) -> IssuedCredential:
    return pgwarden.grant("alice", "read-only")


@pytest.fixture(scope="module")
def probes(postgres: PostgresServer) -> Iterator[None]:
    """A sequence the read-only role may read but not advance, and a procedure that writes."""
    with superuser_orders(postgres) as su:
        su.execute(f"DROP SEQUENCE IF EXISTS {PROBE_SEQUENCE}")
        su.execute(f"CREATE SEQUENCE {PROBE_SEQUENCE}")
        su.execute(f"GRANT SELECT ON SEQUENCE {PROBE_SEQUENCE} TO {RO_ROLE}")
        su.execute(
            f"CREATE OR REPLACE PROCEDURE {PROBE_PROCEDURE}() LANGUAGE sql SECURITY INVOKER "
            "AS $$ INSERT INTO items (name) VALUES ('written by a procedure') $$"
        )
        su.execute(f"GRANT EXECUTE ON PROCEDURE {PROBE_PROCEDURE}() TO {RO_ROLE}")
    yield
    terminate_pgwarden_backends(postgres)
    with superuser_orders(postgres) as su:
        su.execute(f"DROP SEQUENCE IF EXISTS {PROBE_SEQUENCE}")
        su.execute(f"DROP PROCEDURE IF EXISTS {PROBE_PROCEDURE}()")
        su.execute(f"DROP TABLE IF EXISTS {PROBE_TABLE}")
    PROGRAM_MARKER.unlink(missing_ok=True)


def database_state(postgres: PostgresServer) -> dict[str, object]:
    """Everything a write by the read-only role could change, as the superuser sees it."""
    with superuser_orders(postgres) as su:

        def one(query: str) -> object:
            row = su.execute(query).fetchone()
            assert row is not None
            return row[0] if len(row) == 1 else row

        return {
            "items": one(
                "SELECT count(*), md5(coalesce(string_agg(id || ':' || name, ',' ORDER BY id), ''))"
                " FROM items"
            ),
            "sequence": one(f"SELECT last_value, is_called FROM {PROBE_SEQUENCE}"),
            "items_id_seq": one("SELECT last_value, is_called FROM items_id_seq"),
            "role": one(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolconfig "
                f"FROM pg_roles WHERE rolname = '{RO_ROLE}'"
            ),
            "member_of": one(
                "SELECT array_agg(roleid::regrole::text ORDER BY 1) FROM pg_auth_members "
                f"WHERE member = '{RO_ROLE}'::regrole"
            ),
            "tables": one(
                "SELECT array_agg(relname::text ORDER BY relname) FROM pg_class "
                "WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'v', 'm')"
            ),
            "large_objects": one("SELECT count(*) FROM pg_largeobject_metadata"),
            "program_ran": PROGRAM_MARKER.exists(),
        }


# -- the attempts -----------------------------------------------------------------------------


def insert(conn: Conn) -> None:
    conn.execute("INSERT INTO items (name) VALUES ('ro insert')")


def update(conn: Conn) -> None:
    conn.execute("UPDATE items SET name = 'ro update'")


def delete(conn: Conn) -> None:
    conn.execute("DELETE FROM items")


def writable_cte(conn: Conn) -> None:
    conn.execute(
        "WITH x AS (INSERT INTO items (name) VALUES ('ro cte') RETURNING *) SELECT * FROM x"
    )


def nextval(conn: Conn) -> None:
    conn.execute(f"SELECT nextval('{PROBE_SEQUENCE}')")


def nextval_of_the_table_sequence(conn: Conn) -> None:
    conn.execute("SELECT nextval('items_id_seq')")


def set_config_role(conn: Conn) -> None:
    conn.execute(f"SELECT set_config('role', '{RW_ROLE}', false)")
    conn.execute("INSERT INTO items (name) VALUES ('ro as rw')")


def set_role(conn: Conn) -> None:
    conn.execute(f"SET ROLE {RW_ROLE}")
    conn.execute("INSERT INTO items (name) VALUES ('ro as rw')")


def set_session_authorization(conn: Conn) -> None:
    conn.execute(f"SET SESSION AUTHORIZATION {RW_ROLE}")


def alter_role_superuser(conn: Conn) -> None:
    conn.execute("ALTER ROLE current_user SUPERUSER")


def grant_membership(conn: Conn) -> None:
    conn.execute(f"GRANT {RW_ROLE} TO current_user")


def begin_read_write(conn: Conn) -> None:
    conn.execute("BEGIN READ WRITE")
    conn.execute("INSERT INTO items (name) VALUES ('ro read write')")


def copy_from_stdin(conn: Conn) -> None:
    with conn.cursor() as cur, cur.copy("COPY items (name) FROM STDIN") as copy:
        copy.write_row(("ro copy",))


def copy_to_program(conn: Conn) -> None:
    conn.execute(f"COPY (SELECT 1) TO PROGRAM 'touch {PROGRAM_MARKER}'")


def do_block(conn: Conn) -> None:
    conn.execute("DO $$ BEGIN INSERT INTO items (name) VALUES ('ro do'); END $$")


def create_table(conn: Conn) -> None:
    conn.execute(f"CREATE TABLE {PROBE_TABLE} (id int)")


def call_procedure(conn: Conn) -> None:
    conn.execute(f"CALL {PROBE_PROCEDURE}()")


def extended_protocol_insert(conn: Conn) -> None:
    conn.execute("INSERT INTO items (name) VALUES (%s)", ("ro extended",), prepare=False)


def prepared_statement_insert(conn: Conn) -> None:
    conn.execute("INSERT INTO items (name) VALUES (%s)", ("ro prepared",), prepare=True)


def prepare_execute_insert(conn: Conn) -> None:
    conn.execute("PREPARE ro_write(text) AS INSERT INTO items (name) VALUES ($1)")
    conn.execute("EXECUTE ro_write('ro prepared sql')")


@dataclass(frozen=True)
class Case:
    attempt: Callable[[Conn], None]
    sqlstate: str = INSUFFICIENT_PRIVILEGE


CASES = {
    "INSERT": Case(insert),
    "UPDATE": Case(update),
    "DELETE": Case(delete),
    "writable CTE": Case(writable_cte),
    "nextval": Case(nextval),
    "nextval of items_id_seq": Case(nextval_of_the_table_sequence),
    "set_config role": Case(set_config_role),
    "SET ROLE": Case(set_role),
    "SET SESSION AUTHORIZATION": Case(set_session_authorization),
    "ALTER ROLE SUPERUSER": Case(alter_role_superuser),
    "GRANT role TO current_user": Case(grant_membership),
    "BEGIN READ WRITE; INSERT": Case(begin_read_write),
    "COPY FROM STDIN": Case(copy_from_stdin),
    "COPY TO PROGRAM": Case(copy_to_program),
    "DO": Case(do_block),
    "CREATE TABLE": Case(create_table),
    "CALL": Case(call_procedure),
    "extended protocol INSERT": Case(extended_protocol_insert),
    "prepared statement INSERT": Case(prepared_statement_insert),
    "PREPARE/EXECUTE INSERT": Case(prepare_execute_insert),
}


def assert_write_refused(
    pgwarden: RunningPgwarden,
    credential: IssuedCredential,
    postgres: PostgresServer,
    attempt: Callable[[Conn], None],
    expected_sqlstate: str = INSUFFICIENT_PRIVILEGE,
) -> None:
    """`attempt` fails with `expected_sqlstate`, nothing changes, and the session goes on."""
    before = database_state(postgres)
    with psycopg.connect(pgwarden.dsn(credential), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (RO_ROLE,)
        with pytest.raises(psycopg.Error) as failure:
            attempt(conn)
        assert failure.value.sqlstate == expected_sqlstate, failure.value
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")
        # Usable afterwards, and still the read-only role.
        assert conn.execute("SELECT current_user, session_user, 'usable'").fetchone() == (
            RO_ROLE, RO_ROLE, "usable",
        )  # fmt: skip
    assert database_state(postgres) == before


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_read_only_grant_cannot_write(
    pgwarden: RunningPgwarden,
    ro_credential: IssuedCredential,
    probes: None,
    postgres: PostgresServer,
    case: Case,
) -> None:
    assert_write_refused(pgwarden, ro_credential, postgres, case.attempt, case.sqlstate)


LARGE_OBJECT_WRITES = {
    "lo_from_bytea": "SELECT lo_from_bytea(0, 'written by a read-only grant')",
    "lo_create": "SELECT lo_create(0)",
    "lo_creat": "SELECT lo_creat(-1)",
}


@pytest.mark.parametrize("query", LARGE_OBJECT_WRITES.values(), ids=LARGE_OBJECT_WRITES.keys())
def test_a_read_only_grant_cannot_create_large_objects(
    pgwarden: RunningPgwarden,
    ro_credential: IssuedCredential,
    probes: None,
    postgres: PostgresServer,
    query: str,
) -> None:
    """Large objects persist in pg_largeobject. Postgres lets every role create them unless
    EXECUTE on the lo_* creating functions is revoked from PUBLIC: a role with nothing but SELECT
    grants is not read-only by itself."""

    def create(conn: Conn) -> None:
        conn.execute(query)

    assert_write_refused(pgwarden, ro_credential, postgres, create)


def test_a_function_call_message_cannot_write(
    pgwarden: RunningPgwarden,
    ro_credential: IssuedCredential,
    probes: None,
    postgres: PostgresServer,
) -> None:
    """The fast-path FunctionCall ('F') message: `nextval(regclass)` on the probe sequence."""
    with superuser_orders(postgres) as su:
        row = su.execute(
            "SELECT 'nextval(regclass)'::regprocedure::oid, %s::regclass::oid", (PROBE_SEQUENCE,)
        ).fetchone()
    assert row is not None
    function_oid, sequence_oid = row
    before = database_state(postgres)
    login = raw_login(pgwarden.host, pgwarden.port, "alice", ro_credential.password)
    assert login.conn is not None, login.error
    with login.conn as conn:
        argument = str(sequence_oid).encode()
        conn.send(
            b"F",
            struct.pack("!IhhhI", int(str(function_oid)), 1, 0, 1, len(argument))
            + argument
            + struct.pack("!h", 0),
        )
        replies = _until_ready(conn)
        assert [type_ for type_, _ in replies] == [b"E", b"Z"]
        assert error_fields(replies[0][1])["C"] == INSUFFICIENT_PRIVILEGE
        conn.send(b"Q", b"SELECT current_user\0")
        replies = _until_ready(conn)
        assert [type_ for type_, _ in replies] == [b"T", b"D", b"C", b"Z"]
        assert RO_ROLE.encode() in replies[1][1]
        conn.terminate()
    assert database_state(postgres) == before


def _until_ready(conn: RawPg) -> list[tuple[bytes, bytes]]:
    """Every message up to ReadyForQuery, ErrorResponses included (bounded, with the socket's
    timeout on every read)."""
    messages = []
    for _ in range(100):
        type_, payload = conn.read_message()
        messages.append((type_, payload))
        if type_ == b"Z":
            return messages
    raise AssertionError(f"no ReadyForQuery in {messages!r}")
