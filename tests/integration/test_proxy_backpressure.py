"""A client that stops reading (or a database that stops reading) holds pgwarden's memory flat.

SECURITY.md row 34. pgwarden runs as its own process (`python -m proxy serve`), so its resident
set (/proc/<pid>/status VmRSS) is pgwarden's alone, not the test's.

- Results: a raw-socket client asks for about 1 GB (`repeat('x', 1000)` a million times) and reads
  nothing for a few seconds. The database must end up blocked writing to pgwarden (its backend
  waits on `ClientWrite`) while pgwarden's RSS stays within `MAX_RSS_GROWTH`; then the client reads
  everything and gets every row.
- COPY IN, the other way round: the backend is made to stop reading (its first row waits on a row
  lock the superuser holds) while the client keeps sending COPY data. The client must be held
  back (its sends block) while pgwarden's RSS stays within the bound; once the lock goes, the COPY
  completes and the database has every row.

The peak growth is printed for information; the assertion is a generous bound.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.clients import (
    PgwardenProcess,
    pgwarden_process,
    raw_login,
    superuser_orders,
    terminate_pgwarden_backends,
    wait_until,
)
from tests.fixtures.pgwarden import RW_ROLE, PgwardenDeployment
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.rawpg import RawPg, error_fields

pytestmark = pytest.mark.integration

MB = 1024 * 1024
MAX_RSS_GROWTH = 64 * MB
STALL_SECONDS = 4.0
SAMPLE_EVERY = 0.05
BLOCKED_TIMEOUT = 20.0  # for the database to be seen blocked
IO_TIMEOUT = 60.0  # any single socket operation of the test client
READ_DEADLINE = 120.0  # reading the whole result

RESULT_ROWS = 1_000_000
RESULT_WIDTH = 1000
RESULT_QUERY = f"SELECT repeat('x', {RESULT_WIDTH}) FROM generate_series(1, {RESULT_ROWS})"
# DataRow: int16 column count, int32 length, the value; plus the 4-byte length itself.
DATA_ROW_LENGTH = 4 + 2 + 4 + RESULT_WIDTH
MAX_READ_BYTES = 2 * RESULT_ROWS * (1 + DATA_ROW_LENGTH)

CLIENT_WRITE = ("Client", "ClientWrite")  # the backend waits for its socket to drain
ROW_LOCK = ("Lock", "transactionid")  # the backend waits for another transaction to end
# The client may get a little more into kernel buffers after the backend blocks, not megabytes.
MAX_PROGRESS_WHILE_BLOCKED = 1 * MB

COPY_TABLE = "bp_copy"
COPY_ROW_WIDTH = 1000
COPY_ROWS_PER_MESSAGE = 64
COPY_TOTAL_BYTES = 256 * MB


def info(message: str) -> None:
    print(f"[info] {message}")


@pytest.fixture(scope="module")
def warden(
    deployment: PgwardenDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgwardenProcess]:
    directory: Path = tmp_path_factory.mktemp("pgwarden-process")
    with pgwarden_process(deployment.write_files(directory)) as process:
        yield process


@pytest.fixture
def cleanup_backends(postgres: PostgresServer) -> Iterator[None]:
    yield
    terminate_pgwarden_backends(postgres)


@dataclass
class RssSampler:
    """Samples a process's RSS; `peak` is the highest seen."""

    process: PgwardenProcess
    baseline: int = 0
    peak: int = 0
    samples: list[int] = field(default_factory=list)

    def start(self) -> None:
        self.baseline = self.peak = self.process.rss()

    def sample(self) -> int:
        rss = self.process.rss()
        self.samples.append(rss)
        self.peak = max(self.peak, rss)
        return rss

    def sample_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sample()
            time.sleep(SAMPLE_EVERY)

    @contextmanager
    def in_background(self) -> Iterator[None]:
        """Keep sampling in a thread while the block runs (a client reading at full speed)."""
        done = threading.Event()

        def run() -> None:
            while not done.wait(SAMPLE_EVERY):
                self.sample()

        sampler = threading.Thread(target=run, name="rss-sampler", daemon=True)
        sampler.start()
        try:
            yield
        finally:
            done.set()
            sampler.join(IO_TIMEOUT)

    def sampled(self, result: bool) -> bool:
        """Take a sample along with a polled condition (keeps the peak honest while waiting)."""
        self.sample()
        return result

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def backend_wait(postgres: PostgresServer, query_prefix: str) -> tuple[str, str] | None:
    """(wait_event_type, wait_event) of the pgwarden backend running `query_prefix...`."""
    with postgres.connect() as su:
        row = su.execute(
            "SELECT coalesce(wait_event_type, ''), coalesce(wait_event, '') "
            "FROM pg_stat_activity WHERE application_name LIKE 'pgwarden:%%' "
            "AND state = 'active' AND starts_with(query, %s)",
            (query_prefix,),
        ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def backend_waits_on(postgres: PostgresServer, query_prefix: str, event: tuple[str, str]) -> bool:
    return backend_wait(postgres, query_prefix) == event


def read_result(sock: socket.socket) -> tuple[int, int, bytes]:
    """Read DataRows up to ReadyForQuery: (rows, rows of the wrong size, CommandComplete tag)."""
    pending = bytearray()
    rows = wrong = received = 0
    tag = b""
    deadline = time.monotonic() + READ_DEADLINE
    while time.monotonic() < deadline and received <= MAX_READ_BYTES:
        chunk = sock.recv(MB)
        if not chunk:
            raise EOFError(f"pgwarden closed the connection after {rows} rows")
        received += len(chunk)
        pending += chunk
        position = 0
        while len(pending) - position >= 5:
            type_ = pending[position]
            (length,) = struct.unpack_from("!I", pending, position + 1)
            end = position + 1 + length
            if end > len(pending):
                break
            if type_ == ord("D"):
                rows += 1
                wrong += length != DATA_ROW_LENGTH
            elif type_ == ord("C"):
                tag = bytes(pending[position + 5 : end - 1])
            elif type_ == ord("E"):
                raise AssertionError(f"ErrorResponse: {error_fields(pending[position + 5 : end])}")
            elif type_ == ord("Z"):
                assert end == len(pending), "bytes after ReadyForQuery"
                return rows, wrong, tag
            position = end
        del pending[:position]
    raise AssertionError(f"no ReadyForQuery after {received} bytes and {rows} rows")


def test_a_client_that_stops_reading_a_1_gb_result_holds_pgwarden_memory_flat(
    warden: PgwardenProcess, postgres: PostgresServer, cleanup_backends: None
) -> None:
    credential = warden.grant("alice", "read-only")
    login = raw_login(warden.host, warden.port, "alice", credential.password, timeout=IO_TIMEOUT)
    assert login.conn is not None, login.error
    rss = RssSampler(warden)
    with login.conn as conn:
        rss.sample_for(0.5)  # settle after the login
        rss.start()
        conn.send(b"Q", RESULT_QUERY.encode() + b"\0")
        # The database must be held back by pgwarden: its backend blocks writing to us.
        wait_until(
            lambda: rss.sampled(backend_waits_on(postgres, "SELECT repeat", CLIENT_WRITE)),
            BLOCKED_TIMEOUT,
            "the backend to block on ClientWrite",
        )
        rss.sample_for(STALL_SECONDS)
        stalled = backend_wait(postgres, "SELECT repeat")
        stall_growth = rss.growth
        started = time.monotonic()
        with rss.in_background():
            rows, wrong, tag = read_result(conn.sock)
        elapsed = time.monotonic() - started
        conn.terminate()
    info(
        f"1 GB result, client stalled {STALL_SECONDS:g} s: pgwarden RSS baseline "
        f"{rss.baseline / MB:.1f} MB, peak growth while stalled {stall_growth / MB:.1f} MB, "
        f"peak growth overall (reading at full speed included) {rss.growth / MB:.1f} MB; "
        f"read {rows} rows in {elapsed:.1f} s"
    )
    assert stall_growth < MAX_RSS_GROWTH
    assert rss.growth < MAX_RSS_GROWTH
    assert stalled == CLIENT_WRITE  # held back by pgwarden, and far from done after the stall
    assert (rows, wrong, tag) == (RESULT_ROWS, 0, f"SELECT {RESULT_ROWS}".encode())


@dataclass
class CopySender:
    """Sends COPY data rows until `total` bytes or `stop`; counts what the socket accepted."""

    conn: RawPg
    total: int
    sent: int = 0
    rows: int = 0
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            while self.sent < self.total and not self.stop.is_set():
                first = self.rows + 1
                lines = b"".join(
                    b"%d\t%s\n" % (i, b"y" * COPY_ROW_WIDTH)
                    for i in range(first, first + COPY_ROWS_PER_MESSAGE)
                )
                self.conn.send(b"d", lines)
                self.rows += COPY_ROWS_PER_MESSAGE
                self.sent += len(lines)
        except BaseException as exc:
            self.error = exc


@pytest.fixture
def copy_table(postgres: PostgresServer) -> Iterator[str]:
    with superuser_orders(postgres) as su:
        su.execute(f"DROP TABLE IF EXISTS {COPY_TABLE}")
        su.execute(f"CREATE TABLE {COPY_TABLE} (id bigint PRIMARY KEY, payload text NOT NULL)")
        su.execute(f"GRANT ALL ON {COPY_TABLE} TO {RW_ROLE}")
    yield COPY_TABLE
    terminate_pgwarden_backends(postgres)
    with superuser_orders(postgres) as su:
        su.execute(f"DROP TABLE IF EXISTS {COPY_TABLE}")


def test_a_database_that_stops_reading_copy_data_holds_pgwarden_memory_flat(
    warden: PgwardenProcess, postgres: PostgresServer, copy_table: str
) -> None:
    credential = warden.grant("bob", "read-write")
    login = raw_login(warden.host, warden.port, "bob", credential.password, timeout=IO_TIMEOUT)
    assert login.conn is not None, login.error
    rss = RssSampler(warden)
    with superuser_orders(postgres) as blocker, login.conn as conn:
        # Row 1, inserted and not committed: the COPY's row 1 waits on it, and the backend stops
        # reading its socket.
        blocker.execute("BEGIN")
        blocker.execute(f"INSERT INTO {copy_table} VALUES (1, 'blocker')")
        rss.sample_for(0.5)
        rss.start()
        conn.send(b"Q", f"COPY {copy_table} (id, payload) FROM STDIN".encode() + b"\0")
        type_, payload = conn.read_message()
        assert type_ == b"G", (type_, payload)  # CopyInResponse
        sender = CopySender(conn, COPY_TOTAL_BYTES)
        writer = threading.Thread(target=sender.run, name="copy-sender", daemon=True)
        writer.start()
        try:
            wait_until(
                lambda: rss.sampled(backend_waits_on(postgres, "COPY", ROW_LOCK)),
                BLOCKED_TIMEOUT,
                "the COPY to wait on the row lock",
            )
            rss.sample_for(STALL_SECONDS / 2)
            sent_mid_stall = sender.sent
            rss.sample_for(STALL_SECONDS / 2)
            sent_after_stall = sender.sent
            stall_growth = rss.growth
        finally:
            blocker.execute("ROLLBACK")
        writer.join(READ_DEADLINE)
        if writer.is_alive():
            sender.stop.set()
            raise AssertionError("the COPY sender did not finish after the lock was released")
        assert sender.error is None, sender.error
        conn.send(b"c")  # CopyDone
        replies = []
        for _ in range(10):
            replies.append(conn.read_message())
            if replies[-1][0] == b"Z":
                break
        conn.terminate()
    info(
        f"COPY IN against a blocked backend: pgwarden RSS peak growth while blocked "
        f"{stall_growth / MB:.1f} MB; the client got {sent_after_stall / MB:.1f} MB out of "
        f"{COPY_TOTAL_BYTES / MB:.0f} MB sent before the backend was released"
    )
    # The client was held back, not buffered: its sends stopped going through, far from the end.
    # (What it did get out sits in kernel socket buffers, up to tens of MB with TCP autotuning,
    # not in pgwarden: that is the RSS bound.)
    assert sent_after_stall - sent_mid_stall < MAX_PROGRESS_WHILE_BLOCKED
    assert sent_after_stall < COPY_TOTAL_BYTES // 2
    assert stall_growth < MAX_RSS_GROWTH
    assert [type_ for type_, _ in replies] == [b"C", b"Z"], replies
    assert replies[0][1] == f"COPY {sender.rows}".encode() + b"\0"
    with superuser_orders(postgres) as su:
        assert su.execute(f"SELECT count(*), max(id) FROM {copy_table}").fetchone() == (
            sender.rows, sender.rows,
        )  # fmt: skip
