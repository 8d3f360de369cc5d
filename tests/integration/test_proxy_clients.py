"""Real clients through a real pgwarden to the real Postgres: everything a client does works.

The `psql` binary (SELECT, a script with a transaction, `\\copy`), psycopg in the simple protocol,
the extended protocol with parameters, server-side prepared statements, binary results; COPY of
more than 100 MB in each direction and a result of a million rows; an error inside a transaction
then ROLLBACK; LISTEN/NOTIFY between two sessions; a cancel of a running query (and of nothing).
Each test checks what the client saw and, where something was written, what the database holds.
Throughput is printed for information (`-rA` or `-s` shows it), never asserted.
"""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import pq

from proxy.grants.requests import IssuedCredential
from tests.fixtures.clients import (
    psql_command,
    raw_login,
    run_psql,
    superuser_orders,
    terminate_pgwarden_backends,
    wait_until,
)
from tests.fixtures.pgwarden import RO_ROLE, RW_ROLE, RunningPgwarden
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.rawpg import error_fields

pytestmark = pytest.mark.integration

MB = 1024 * 1024
# COPY rows: `id<TAB>payload<LF>`, the payload being md5(id) 31 times (992 characters), so the
# database can check every row against its id and the client can recompute the exact stream.
PAYLOAD_REPEAT = 31
COPY_ROWS = 110_000  # about 110 MB of COPY text
COPY_BLOCK_ROWS = 1_000
MIN_COPY_BYTES = 100 * MB
ORDERED_COPY_SOURCE = "SELECT id, payload FROM items_copy_out ORDER BY id"
MILLION = 1_000_000
LARGE_VALUE = 32 * MB
JOIN_TIMEOUT = 30.0
CANCEL_TIMEOUT = 10.0
CANCEL_REQUEST_CODE = 80877102  # (1234 << 16) | 5678
SLEEP_SECONDS = 60


def payload(row_id: int) -> str:
    return hashlib.md5(str(row_id).encode()).hexdigest() * PAYLOAD_REPEAT


def copy_block(first: int, last: int) -> bytes:
    """COPY text-format lines for ids first..last inclusive."""
    return "".join(f"{i}\t{payload(i)}\n" for i in range(first, last + 1)).encode()


def copy_blocks(rows: int) -> Iterator[bytes]:
    for first in range(1, rows + 1, COPY_BLOCK_ROWS):
        yield copy_block(first, min(first + COPY_BLOCK_ROWS - 1, rows))


def info(message: str) -> None:
    print(f"[info] {message}")


@pytest.fixture(scope="module")
def ro_credential(pgwarden: RunningPgwarden) -> IssuedCredential:
    """alice's read-only grant: the module's only alice credential (a newer one replaces it)."""
    return pgwarden.grant("alice", "read-only")


@pytest.fixture(scope="module")
def rw_credential(pgwarden: RunningPgwarden) -> IssuedCredential:
    """bob's read-write grant."""
    return pgwarden.grant("bob", "read-write")


@pytest.fixture(scope="module")
def scratch_tables(postgres: PostgresServer) -> Iterator[None]:
    """Tables the read-write role may use: a COPY target, a COPY source, a transaction probe."""
    with superuser_orders(postgres) as su:
        su.execute("DROP TABLE IF EXISTS items_copy, items_copy_out, items_txn")
        su.execute("CREATE TABLE items_copy (id bigint NOT NULL, payload text NOT NULL)")
        su.execute("CREATE TABLE items_copy_out (id bigint PRIMARY KEY, payload text NOT NULL)")
        su.execute("CREATE TABLE items_txn (id bigint PRIMARY KEY)")
        su.execute(
            "INSERT INTO items_copy_out "
            "SELECT g, repeat(md5(g::text), %s) FROM generate_series(1, %s) g",
            (PAYLOAD_REPEAT, COPY_ROWS),
        )
        su.execute(f"GRANT ALL ON items_copy, items_copy_out, items_txn TO {RW_ROLE}")
    yield
    terminate_pgwarden_backends(postgres)
    with superuser_orders(postgres) as su:
        su.execute("DROP TABLE IF EXISTS items_copy, items_copy_out, items_txn")


# -- psql -------------------------------------------------------------------------------------


def test_psql_runs_a_select_through_pgwarden(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential
) -> None:
    result = run_psql(
        pgwarden.host, pgwarden.port, ro_credential.username, ro_credential.password,
        ["-At", "-c", "SELECT current_user, current_database(), 40 + 2"],  # sslmode=prefer
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{RO_ROLE}|orders|42\n"
    # Nothing on stderr but the login's NOTICE of how long the access lasts.
    assert re.fullmatch(
        r'NOTICE:  pgwarden: read-only on "orders" until .* left\)\n', result.stderr
    )


def test_psql_runs_a_multi_statement_script(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential, tmp_path: Path
) -> None:
    exported = tmp_path / "series.txt"
    script = tmp_path / "script.sql"
    script.write_text(
        "SELECT current_user;\n"
        "BEGIN;\n"
        "SELECT count(*) >= 1 FROM items;\n"
        "SELECT 'multi' || '-' || 'line'\n"
        "  AS joined;\n"
        "SELECT 1; SELECT 2;\n"
        "COMMIT;\n"
        "SELECT current_setting('application_name') LIKE 'pgwarden:alice:%';\n"
        f"\\copy (SELECT g FROM generate_series(1, 1000) g) TO '{exported}'\n"
        "\\d items\n"
    )
    result = run_psql(
        pgwarden.host, pgwarden.port, ro_credential.username, ro_credential.password,
        ["-q", "-At", "-f", str(script)],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:6] == [RO_ROLE, "t", "multi-line", "1", "2", "t"], result.stdout
    assert any(line.startswith("id|bigint|") for line in lines[6:]), result.stdout  # \d items
    assert exported.read_text().splitlines() == [str(i) for i in range(1, 1001)]


def test_ctrl_c_in_psql_cancels_the_running_query(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential, postgres: PostgresServer
) -> None:
    """psql's cancel is libpq's PQcancel, which waits for the server to close the cancel
    connection: a proxy that leaves it open hangs psql at the first Ctrl-C."""
    argv, env = psql_command(
        pgwarden.host, pgwarden.port, ro_credential.username, ro_credential.password,
        ["-At", "-c", f"SELECT pg_sleep({SLEEP_SECONDS})"],
    )  # fmt: skip
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as psql:
        try:
            wait_until(lambda: _sleeping_psql(postgres), 10, "psql's pg_sleep to run")
            started = time.monotonic()
            psql.send_signal(signal.SIGINT)
            stdout, stderr = psql.communicate(timeout=JOIN_TIMEOUT)
        finally:
            if psql.poll() is None:
                psql.kill()
                terminate_pgwarden_backends(postgres)
        elapsed = time.monotonic() - started
    assert "canceling statement due to user request" in stderr
    assert psql.returncode == 1, (stdout, stderr)  # an SQL error, not a crash or a lost server
    info(f"psql Ctrl-C: psql exited {elapsed:.2f} s after SIGINT")


def _sleeping_psql(postgres: PostgresServer) -> bool:
    with superuser_orders(postgres) as su:
        row = su.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND application_name LIKE %s AND query LIKE 'SELECT pg_sleep(%%'",
            ("pgwarden:alice:% psql-through-pgwarden",),
        ).fetchone()
    return row == (1,)


# -- psycopg: protocols and formats -----------------------------------------------------------


def test_simple_protocol_runs_several_statements_in_one_query(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential
) -> None:
    with psycopg.connect(pgwarden.dsn(ro_credential), autocommit=True) as conn:
        # Without parameters psycopg sends a simple Query; only that protocol allows two statements.
        cur = conn.execute("SELECT 1 AS a; SELECT 'two' AS b", prepare=False)
        assert cur.fetchall() == [(1,)]
        assert cur.nextset()
        assert cur.fetchall() == [("two",)]
        client_side = psycopg.ClientCursor(conn)
        client_side.execute("SELECT %s::int * 2, %s::text, %s IS NULL", (21, "it's", None))
        assert client_side.fetchone() == (42, "it's", True)
        assert client_side._query is not None
        assert b"'it''s'" in client_side._query.query  # bound by the client: simple protocol


def test_extended_protocol_with_parameters(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential
) -> None:
    with psycopg.connect(pgwarden.dsn(ro_credential), autocommit=True) as conn:
        cur = conn.execute(
            "SELECT %s::int + %s::int, %s::text, %s::bytea, %s::int[]",
            (40, 2, "naïve ☃", b"\x00\xff", [1, 2, 3]),
            prepare=False,
        )
        assert cur.fetchone() == (42, "naïve ☃", b"\x00\xff", [1, 2, 3])
        cur = conn.execute("SELECT name FROM items WHERE id = %s", (1,))
        assert cur.fetchone() is not None


def test_server_side_prepared_statement_runs_many_times(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential
) -> None:
    with psycopg.connect(pgwarden.dsn(ro_credential), autocommit=True) as conn:
        query = "SELECT %s::int * 2, %s::text || '!'"
        for i in range(8):
            row = conn.execute(query, (i, f"run {i}"), prepare=True).fetchone()
            assert row == (i * 2, f"run {i}!")
        prepared = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
        assert [statement for (statement,) in prepared] == ["SELECT $1::int * 2, $2::text || '!'"]
        conn.execute("PREPARE doubled(int) AS SELECT $1 * 2")
        assert conn.execute("EXECUTE doubled(21)").fetchone() == (42,)
        conn.execute("DEALLOCATE doubled")


def test_binary_results(pgwarden: RunningPgwarden, ro_credential: IssuedCredential) -> None:
    with psycopg.connect(pgwarden.dsn(ro_credential), autocommit=True) as conn:
        cur = conn.cursor(binary=True)
        cur.execute(
            "SELECT %s::int8, %s::bytea, 12.5::numeric, '{1,2,3}'::int4[], 'x'::text, NULL::int",
            (2**40, bytes(range(256))),
        )
        assert cur.fetchone() == (2**40, bytes(range(256)), 12.5, [1, 2, 3], "x", None)
        assert cur.pgresult is not None
        formats = [cur.pgresult.fformat(i) for i in range(cur.pgresult.nfields)]
        assert formats == [pq.Format.BINARY] * 6


def test_a_client_asking_for_protocol_3_2_is_negotiated_down_to_3_0(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential
) -> None:
    """libpq 18 with max_protocol_version=3.2 (longer cancel keys in 3.2): one
    NegotiateProtocolVersion, a 3.0 session, and its cancel request completes."""
    if pq.version() < 180000:
        pytest.skip("needs libpq 18 (max_protocol_version)")
    dsn = pgwarden.dsn(ro_credential, max_protocol_version="3.2")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.info.pgconn.protocol_version == 3
        assert conn.execute("SELECT current_user").fetchone() == (RO_ROLE,)
        assert _cancel(conn) is None


# -- bulk data --------------------------------------------------------------------------------


def test_copy_from_stdin_of_more_than_100_mb(
    pgwarden: RunningPgwarden,
    rw_credential: IssuedCredential,
    scratch_tables: None,
    postgres: PostgresServer,
) -> None:
    sent = 0
    with psycopg.connect(pgwarden.dsn(rw_credential), autocommit=True) as conn:
        conn.execute("TRUNCATE items_copy")
        started = time.monotonic()
        with conn.cursor() as cur:
            with cur.copy("COPY items_copy (id, payload) FROM STDIN") as copy:
                for block in copy_blocks(COPY_ROWS):
                    copy.write(block)
                    sent += len(block)
            elapsed = time.monotonic() - started
            assert cur.rowcount == COPY_ROWS  # from the server's `COPY n`
    assert sent >= MIN_COPY_BYTES
    info(f"COPY FROM STDIN: {sent / MB:.1f} MB in {elapsed:.2f} s = {sent / MB / elapsed:.0f} MB/s")
    with superuser_orders(postgres) as su:
        row = su.execute(
            "SELECT count(*), count(DISTINCT id), min(id), max(id), "
            "count(*) FILTER (WHERE payload <> repeat(md5(id::text), %s)) FROM items_copy",
            (PAYLOAD_REPEAT,),
        ).fetchone()
    assert row == (COPY_ROWS, COPY_ROWS, 1, COPY_ROWS, 0)


def test_copy_to_stdout_of_more_than_100_mb(
    pgwarden: RunningPgwarden, rw_credential: IssuedCredential, scratch_tables: None
) -> None:
    expected = hashlib.sha256()
    for block in copy_blocks(COPY_ROWS):
        expected.update(block)
    received = hashlib.sha256()
    size = 0
    with psycopg.connect(pgwarden.dsn(rw_credential), autocommit=True) as conn:
        started = time.monotonic()
        with conn.cursor() as cur:
            with cur.copy(f"COPY ({ORDERED_COPY_SOURCE}) TO STDOUT") as copy:
                for data in copy:
                    received.update(data)
                    size += len(data)
            elapsed = time.monotonic() - started
            assert cur.rowcount == COPY_ROWS  # from the server's `COPY n`
    assert size >= MIN_COPY_BYTES
    assert received.hexdigest() == expected.hexdigest()
    info(f"COPY TO STDOUT: {size / MB:.1f} MB in {elapsed:.2f} s = {size / MB / elapsed:.0f} MB/s")


def test_a_million_row_result_is_read_in_full(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential
) -> None:
    with psycopg.connect(pgwarden.dsn(ro_credential), autocommit=True) as conn:
        started = time.monotonic()
        cur = conn.execute(f"SELECT generate_series(1, {MILLION})")
        count = total = 0
        for (value,) in cur:
            count += 1
            total += value
        elapsed = time.monotonic() - started
        assert (count, total) == (MILLION, MILLION * (MILLION + 1) // 2)
        assert conn.execute("SELECT 'still there'").fetchone() == ("still there",)
    info(f"{MILLION} rows read through pgwarden in {elapsed:.2f} s")


def test_large_parameters_and_values_round_trip(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential
) -> None:
    """A 32 MB bytea parameter (one Bind message, half the default message cap of
    `limits.max_message_bytes`) and a 32 MB text value (one DataRow)."""
    blob = bytes(range(256)) * (LARGE_VALUE // 256)
    with psycopg.connect(pgwarden.dsn(ro_credential), autocommit=True) as conn:
        row = conn.execute("SELECT length(v), md5(v) FROM (SELECT %s::bytea) AS t(v)", (blob,))
        assert row.fetchone() == (LARGE_VALUE, hashlib.md5(blob).hexdigest())
        (text,) = conn.execute("SELECT repeat('ab', %s)", (LARGE_VALUE // 2,)).fetchone() or ("",)
        assert text == "ab" * (LARGE_VALUE // 2)


def _pipeline_failing_in_the_middle(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    with conn.pipeline() as pipeline:
        conn.execute("SELECT 1")
        pipeline.sync()
        conn.execute("SELECT 1 / %s", (0,))
        conn.execute("SELECT 3")  # skipped by the server until the next Sync
        pipeline.sync()


def test_a_pipeline_with_an_error_in_the_middle(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential
) -> None:
    with psycopg.connect(pgwarden.dsn(ro_credential), autocommit=True) as conn:
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int", (i,)) for i in range(50)]
        assert [cur.fetchone() for cur in cursors] == [(i,) for i in range(50)]
        with pytest.raises(psycopg.errors.DivisionByZero):
            _pipeline_failing_in_the_middle(conn)
        assert conn.execute("SELECT 'after the pipeline'").fetchone() == ("after the pipeline",)


def test_notices_and_parameter_changes_reach_the_client(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential
) -> None:
    notices: list[str] = []
    with psycopg.connect(pgwarden.dsn(ro_credential, client_encoding="LATIN1")) as conn:
        conn.autocommit = True
        conn.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
        # The greeting's ParameterStatus messages came through: libpq knows the server.
        assert conn.info.parameter_status("server_version")
        assert conn.info.parameter_status("client_encoding") == "LATIN1"
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello from %', current_user; END $$")
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert conn.execute("SELECT 'café'").fetchone() == ("café",)
    assert notices == [f"hello from {RO_ROLE}"]


# -- transactions, notifications, cancel ------------------------------------------------------


def test_error_in_a_transaction_then_rollback_leaves_the_session_usable(
    pgwarden: RunningPgwarden,
    rw_credential: IssuedCredential,
    scratch_tables: None,
    postgres: PostgresServer,
) -> None:
    with psycopg.connect(pgwarden.dsn(rw_credential)) as conn:
        conn.execute("INSERT INTO items_txn VALUES (1)")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        assert conn.info.transaction_status == pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM items_txn").fetchone() == (0,)
        conn.execute("INSERT INTO items_txn VALUES (2)")
        conn.commit()
    with superuser_orders(postgres) as su:
        assert su.execute("SELECT array_agg(id) FROM items_txn").fetchone() == ([2],)


def test_listen_notify_between_two_pgwarden_sessions(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential
) -> None:
    dsn = pgwarden.dsn(ro_credential)
    with (
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn, autocommit=True) as notifier,
    ):
        listener.execute("LISTEN pgwarden_test_channel")
        (notifier_pid,) = notifier.execute("SELECT pg_backend_pid()").fetchone() or (None,)
        # The listener is idle when these arrive: pgwarden must relay messages nobody asked for.
        notifier.execute("NOTIFY pgwarden_test_channel, 'first'")
        notifier.execute("SELECT pg_notify(%s, %s)", ("pgwarden_test_channel", "second"))
        seen = [
            (note.channel, note.payload, note.pid)
            for _ in range(2)
            for note in listener.notifies(timeout=10, stop_after=1)
        ]
    assert seen == [
        ("pgwarden_test_channel", "first", notifier_pid),
        ("pgwarden_test_channel", "second", notifier_pid),
    ]


def _cancel(conn: psycopg.Connection[tuple[object, ...]]) -> str | None:
    """Send a cancel as libpq does; None when it completed, else what went wrong.

    libpq's cancel waits for the server to close the cancel connection (that is how Postgres says
    it has acted on it), so a proxy that leaves it open makes every client's cancel hang.
    """
    try:
        conn.cancel_safe(timeout=CANCEL_TIMEOUT)
    except psycopg.errors.CancellationTimeout as exc:
        return f"the cancel request did not complete within {CANCEL_TIMEOUT:g} s: {exc}"
    return None


def _sleeping_backend(postgres: PostgresServer, backend_pid: int) -> bool:
    with superuser_orders(postgres) as su:
        row = su.execute(
            "SELECT state, query FROM pg_stat_activity WHERE pid = %s", (backend_pid,)
        ).fetchone()
    return row is not None and row[0] == "active" and str(row[1]).startswith("SELECT pg_sleep(")


def _in_pg_sleep(postgres: PostgresServer, backend_pid: int) -> bool:
    """The backend is inside pg_sleep (not only parsing it: a cancel then would be ignored)."""
    with superuser_orders(postgres) as su:
        row = su.execute(
            "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (backend_pid,)
        ).fetchone()
    return row is not None and row[0] == "PgSleep"


SLEEPS = {
    "simple protocol": (f"SELECT pg_sleep({SLEEP_SECONDS})", None),
    "extended protocol": ("SELECT pg_sleep(%s)", (SLEEP_SECONDS,)),
}


@pytest.mark.parametrize(("query", "params"), SLEEPS.values(), ids=SLEEPS.keys())
def test_cancel_stops_a_running_query_and_the_session_goes_on(
    pgwarden: RunningPgwarden,
    ro_credential: IssuedCredential,
    postgres: PostgresServer,
    query: str,
    params: tuple[int] | None,
) -> None:
    outcome: list[BaseException | None] = []
    with psycopg.connect(pgwarden.dsn(ro_credential), autocommit=True) as conn:
        (backend_pid,) = conn.execute("SELECT pg_backend_pid()").fetchone() or (0,)

        def sleep() -> None:
            try:
                conn.execute(query, params)
            except BaseException as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        worker = threading.Thread(target=sleep, name="sleeper", daemon=True)
        started = time.monotonic()
        worker.start()
        try:
            wait_until(lambda: _sleeping_backend(postgres, backend_pid), 10, "pg_sleep to run")
            cancel_problem = _cancel(conn)
            worker.join(JOIN_TIMEOUT)
        finally:
            if worker.is_alive():
                terminate_pgwarden_backends(postgres)
                worker.join(JOIN_TIMEOUT)
        elapsed = time.monotonic() - started
        assert len(outcome) == 1
        assert isinstance(outcome[0], psycopg.errors.QueryCanceled), outcome
        assert cancel_problem is None
        assert elapsed < SLEEP_SECONDS / 2
        # The same backend, not a new one: the query was cancelled, the session was not ended.
        assert conn.execute("SELECT pg_backend_pid(), 'usable'").fetchone() == (
            backend_pid, "usable",
        )  # fmt: skip
    info(f"cancel: QueryCanceled {elapsed:.2f} s after the query was sent")


def test_cancel_with_nothing_running_does_no_harm(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential
) -> None:
    with psycopg.connect(pgwarden.dsn(ro_credential), autocommit=True) as conn:
        (backend_pid,) = conn.execute("SELECT pg_backend_pid()").fetchone() or (0,)
        assert _cancel(conn) is None
        # A cancel delivered late would hit this query; it must run to the end.
        row = conn.execute("SELECT pg_sleep(1), pg_backend_pid(), 'fine'").fetchone()
        assert row == ("", backend_pid, "fine")
        assert conn.info.transaction_status == pq.TransactionStatus.IDLE


def test_cancel_reaches_an_execute_sent_before_its_sync(
    pgwarden: RunningPgwarden, ro_credential: IssuedCredential, postgres: PostgresServer
) -> None:
    """Found by asyncpg's own suite (make compat): a client streaming Parse/Bind/Execute has its
    statement running before any Sync; its cancel must reach it, as it would directly."""
    greeting: list[tuple[bytes, bytes]] = []
    login = raw_login(
        pgwarden.host, pgwarden.port, ro_credential.username, ro_credential.password,
        keep_greeting=greeting, timeout=CANCEL_TIMEOUT,
    )  # fmt: skip
    assert login.conn is not None, login.error
    (key,) = [payload for kind, payload in greeting if kind == b"K"]
    (backend_pid,) = struct.unpack("!I", key[:4])  # the backend's real pid (issue 15, item 3)
    with login.conn as conn:
        conn.send(b"P", b"\0SELECT pg_sleep(60)\0\0\0")
        conn.send(b"B", b"\0\0" + bytes(6))  # no formats, no parameters, no result formats
        conn.send(b"E", b"\0" + bytes(4))
        conn.send(b"H")  # Flush, no Sync: the statement runs now
        wait_until(lambda: _in_pg_sleep(postgres, backend_pid), 10, "pg_sleep to run")
        with socket.create_connection((pgwarden.host, pgwarden.port), CANCEL_TIMEOUT) as cancel:
            cancel.sendall(struct.pack("!II", 16, CANCEL_REQUEST_CODE) + key)
            assert cancel.recv(1) == b""  # closed, once the database has the cancel
        kinds = [conn.read_message() for _ in range(3)]  # within the timeout, not after 60 s
        assert [kind for kind, _ in kinds] == [b"1", b"2", b"E"]
        assert error_fields(kinds[2][1])["C"] == "57014"
        conn.send(b"S")
        assert conn.read_until_ready()[-1][0] == b"Z"
