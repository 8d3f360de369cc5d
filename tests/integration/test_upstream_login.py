"""pgwarden's upstream login against a real PostgreSQL (the harness's, SCRAM in pg_hba).

`connect_upstream` logs in as a fresh role, the connection runs a query, `pg_stat_activity` shows
our application_name and nothing else we did not mean to send; Postgres' own refusals (28P01,
3D000) reach the caller with their SQLSTATE; the SCRAM cache spares the second PBKDF2;
`send_cancel_request` stops a running `pg_sleep`; `terminate_upstream` ends the backend.
The harness's Postgres has no TLS: TLS negotiation is covered against the fake upstream
(tests/unit/upstream/test_upstream_misbehaving.py).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
from psycopg import sql

from proxy.auth import SaltedPasswordCache, generate_password
from proxy.net.peer import Peer
from proxy.policy.models import UpstreamTlsMode
from proxy.upstream.connect import (
    UpstreamConnection,
    UpstreamError,
    UpstreamLogin,
    connect_upstream,
    send_cancel_request,
    terminate_upstream,
)
from proxy.wire import (
    CommandComplete,
    DataRow,
    ErrorResponse,
    Frame,
    MessageReader,
    Query,
    ReadyForQuery,
    TransactionStatus,
    decode_backend,
    encode,
)
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.integration

TEST_TIMEOUT = 30.0  # the whole test body
LOGIN_TIMEOUT = 10.0
POLL_INTERVAL = 0.05


def run(main: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(main, TEST_TIMEOUT))


@pytest.fixture
def role(postgres: PostgresServer) -> Iterator[tuple[str, str]]:
    """A fresh LOGIN role with a random password; dropped (with its backends) afterwards."""
    name, password = f"pgwarden_up_{secrets.token_hex(6)}", generate_password()
    with postgres.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    yield name, password
    with postgres.connect() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def login(postgres: PostgresServer, role: tuple[str, str], **changes: Any) -> UpstreamLogin:
    values: dict[str, Any] = {
        "host": postgres.host, "port": postgres.port, "database": postgres.dbname,
        "role": role[0], "password": role[1], "tls_mode": UpstreamTlsMode.DISABLE,
        "target": "test-db",
    }  # fmt: skip
    return UpstreamLogin(**{**values, **changes})


async def query(peer: Peer, text: str) -> list[Any]:
    """Send a simple Query and return the decoded replies up to ReadyForQuery."""
    peer.write(encode(Query(text)))
    reader = MessageReader()
    replies: list[Any] = []
    async with asyncio.timeout(LOGIN_TIMEOUT):
        while not replies or not isinstance(replies[-1], ReadyForQuery):
            frame = reader.next_message()
            if isinstance(frame, Frame):
                replies.append(decode_backend(frame))
            else:
                reader.feed(await peer.read())
    return replies


def backend_row(postgres: PostgresServer, pid: int) -> tuple[Any, ...] | None:
    with postgres.connect() as conn:
        return conn.execute(
            "SELECT usename, application_name, state, query FROM pg_stat_activity WHERE pid = %s",
            (pid,),
        ).fetchone()


async def wait_for_backend(
    postgres: PostgresServer, pid: int, predicate: Any, timeout: float = 10.0
) -> tuple[Any, ...] | None:
    """Poll pg_stat_activity (off the loop) until `predicate(row)` holds; bounded."""
    async with asyncio.timeout(timeout):
        while True:
            row = await asyncio.to_thread(backend_row, postgres, pid)
            if predicate(row):
                return row
            await asyncio.sleep(POLL_INTERVAL)


def test_login_with_scram_gives_a_usable_connection(
    postgres: PostgresServer, role: tuple[str, str]
) -> None:
    app = f"pgwarden-test-{secrets.token_hex(4)}"
    params = (
        ("application_name", app),
        ("search_path", "pg_catalog"),
        ("options", "-c work_mem=1MB"),
    )

    async def main() -> tuple[UpstreamConnection, list[Any], list[Any], tuple[Any, ...] | None]:
        conn = await connect_upstream(
            login(postgres, role, startup_parameters=params), connect_timeout=LOGIN_TIMEOUT
        )
        try:
            replies = await query(conn.peer, "SELECT 1")
            settings = await query(
                conn.peer, "SELECT current_setting('search_path'), current_setting('work_mem')"
            )
            row = await asyncio.to_thread(backend_row, postgres, conn.backend_key.process_id)
        finally:
            await terminate_upstream(conn)
        return conn, replies, settings, row

    conn, replies, settings, row = run(main())
    assert conn.server_version
    assert conn.server_version[0].isdigit()
    assert conn.parameters["client_encoding"] == "UTF8"
    assert conn.parameters["application_name"] == app
    assert conn.ready_status is TransactionStatus.IDLE
    assert len(conn.backend_key.secret_key) == 4
    assert conn.pending == b""
    assert [type(r).__name__ for r in replies] == [
        "RowDescription", "DataRow", "CommandComplete", "ReadyForQuery",
    ]  # fmt: skip
    assert replies[1] == DataRow((b"1",))
    assert replies[2] == CommandComplete("SELECT 1")
    # search_path went upstream (a setting the role could SET); raw `options` never does: the
    # session reads it into settings first (row 22), so work_mem keeps the server's default.
    assert settings[1].values == (b"pg_catalog", b"4MB")
    assert row is not None
    assert row[:2] == (role[0], app)


def test_terminate_ends_the_backend(postgres: PostgresServer, role: tuple[str, str]) -> None:
    async def main() -> tuple[UpstreamConnection, tuple[Any, ...] | None]:
        conn = await connect_upstream(login(postgres, role), connect_timeout=LOGIN_TIMEOUT)
        await terminate_upstream(conn)
        gone = await wait_for_backend(postgres, conn.backend_key.process_id, lambda r: r is None)
        return conn, gone

    conn, gone = run(main())
    assert conn.peer.is_closed
    assert gone is None


def test_wrong_password_is_refused_with_28p01(
    postgres: PostgresServer, role: tuple[str, str]
) -> None:
    error = run(failed_login(login(postgres, role, password="not-the-password")))
    assert error.sqlstate == "28P01"
    assert error.refused
    assert error.message == (
        f'pgwarden: the database refused the login for role "{role[0]}": '
        f'password authentication failed for user "{role[0]}"'
    )


def test_nonexistent_database_is_refused_with_3d000(
    postgres: PostgresServer, role: tuple[str, str]
) -> None:
    database = f"no_such_db_{secrets.token_hex(4)}"
    error = run(failed_login(login(postgres, role, database=database)))
    assert error.sqlstate == "3D000"
    assert f'database "{database}" does not exist' in error.message


def test_connection_refused_is_08001(postgres: PostgresServer, role: tuple[str, str]) -> None:
    error = run(failed_login(login(postgres, role, port=closed_port())))
    assert error.sqlstate == "08001"
    assert "could not connect to the server" in error.message  # refused, not a timeout


async def failed_login(made: UpstreamLogin, **kw: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await connect_upstream(made, connect_timeout=LOGIN_TIMEOUT, **kw)
    return info.value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CountingCache(SaltedPasswordCache):
    """A SaltedPasswordCache that counts hits and stores."""

    def __init__(self) -> None:
        super().__init__()
        self.hits = self.stores = 0

    def get(self, password: bytes, salt: bytes, iterations: int) -> bytes | None:
        value = super().get(password, salt, iterations)
        self.hits += value is not None
        return value

    def put(self, password: bytes, salt: bytes, iterations: int, salted: bytes) -> None:
        self.stores += 1
        super().put(password, salt, iterations, salted)


def test_second_login_reuses_the_salted_password(
    postgres: PostgresServer, role: tuple[str, str]
) -> None:
    cache = CountingCache()

    async def main() -> None:
        for _ in range(2):
            conn = await connect_upstream(
                login(postgres, role), scram_cache=cache, connect_timeout=LOGIN_TIMEOUT
            )
            await terminate_upstream(conn)

    run(main())
    assert len(cache) == 1
    assert (cache.stores, cache.hits) == (1, 1)  # PBKDF2 ran once; the second login skipped it


def test_cancel_request_stops_a_running_query(
    postgres: PostgresServer, role: tuple[str, str]
) -> None:
    async def main() -> tuple[bool, list[Any]]:
        conn = await connect_upstream(login(postgres, role), connect_timeout=LOGIN_TIMEOUT)
        try:
            running = asyncio.create_task(query(conn.peer, "SELECT pg_sleep(30)"))
            await wait_for_backend(
                postgres, conn.backend_key.process_id,
                lambda r: r is not None and r[2] == "active" and "pg_sleep" in r[3],
            )  # fmt: skip
            return await conn.cancel(), await running
        finally:
            await terminate_upstream(conn)

    sent, replies = run(main())
    assert sent
    errors = [r for r in replies if isinstance(r, ErrorResponse)]
    assert [e.sqlstate for e in errors] == ["57014"]  # query_canceled
    assert isinstance(replies[-1], ReadyForQuery)


def test_cancel_request_with_a_wrong_key_is_harmless(
    postgres: PostgresServer, role: tuple[str, str]
) -> None:
    async def main() -> tuple[bool, list[Any]]:
        conn = await connect_upstream(login(postgres, role), connect_timeout=LOGIN_TIMEOUT)
        try:
            key = conn.backend_key
            wrong = type(key)(key.process_id, bytes(b ^ 0xFF for b in key.secret_key))
            sent = await send_cancel_request(
                postgres.host, postgres.port, wrong, tls_mode=UpstreamTlsMode.DISABLE
            )
            return sent, await query(conn.peer, "SELECT pg_sleep(0.2)")
        finally:
            await terminate_upstream(conn)

    sent, replies = run(main())
    assert sent  # Postgres answers every cancel the same way: by closing
    assert not any(isinstance(r, ErrorResponse) for r in replies)
