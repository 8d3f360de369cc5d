"""`proxy.workers: 2`: two processes on one port, one server as far as anyone can tell.

`pgwarden serve` runs as a real process with a worker; clients connect through psycopg to real
Postgres, and people use the real HTTP API. Connections spread over both processes (each writes
its own audit chain, and both verify); the API lists and ends sessions in either; a revocation
ends sessions in both; a CancelRequest reaches its session whichever process accepts it; a
password issued through the API is masked by the worker too; an unknown user gets the same mock
salt from both; /metrics carries both, labelled by worker; a killed worker comes back; SIGTERM
stops everything.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from proxy.audit.records import worker_audit_path
from tests.fixtures.clients import wait_until
from tests.fixtures.pgwarden import PgwardenDeployment, port_from_log
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.integration

PROXY_LISTENING = re.compile(r"listening for Postgres clients on 127\.0\.0\.1:(\d+)")
API_LISTENING = re.compile(r"pgwarden API listening on 127\.0\.0\.1:(\d+)")
WORKER_LISTENING = re.compile(r"\[worker 1\] \S+: pgwarden listening for Postgres clients")
START_TIMEOUT = 30.0
CLIENTS = 16  # the chance that all land on one of two workers is 2**-15
Connection = psycopg.Connection[tuple[object, ...]]


@dataclass
class Served:
    config: Path
    directory: Path
    process: subprocess.Popen[bytes]
    log: Path
    proxy_port: int
    api_port: int

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def audit_text(self, worker: int) -> str:
        path = worker_audit_path(self.directory / "audit.jsonl", worker)
        return path.read_text() if path.exists() else ""


@pytest.fixture
def served(deployment: PgwardenDeployment, tmp_path: Path) -> Iterator[Served]:
    config = deployment.write_files(tmp_path, workers=2, audit_fsync="never")
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
            stdout=sink, stderr=subprocess.STDOUT, env=os.environ.copy(),
        )  # fmt: skip
        try:
            proxy_port = port_from_log(PROXY_LISTENING, log, process)
            api_port = port_from_log(API_LISTENING, log, process)
            wait_until(
                lambda: bool(WORKER_LISTENING.search(log.read_text())), START_TIMEOUT, "worker 1"
            )
            yield Served(config, tmp_path, process, log, proxy_port, api_port)
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait(30)


class Api:
    """The HTTP API as people use it, with a token per user made on the server host."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.tokens: dict[str, str] = {}

    def token(self, user: str) -> str:
        if user not in self.tokens:
            done = subprocess.run(
                [sys.executable, "-m", "proxy", "token", "create", user, "--config",
                 str(self.served.config)],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            self.tokens[user] = done.stdout.strip()
        return self.tokens[user]

    def call(self, user: str, method: str, path: str, body: object = None) -> dict[str, object]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.served.api_port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token(user)}",
                     "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, object] = json.loads(response.read())
        return answer

    def grant(self, user: str = "bob") -> tuple[str, str, str]:
        """(request id, user name, temporary password) of a fresh read-only grant."""
        created = self.call(user, "POST", "/api/v1/requests", {
            "target": "orders", "access_level": "read-only", "duration": "30m",
            "reason": "incident 42"})  # fmt: skip
        request_id = str(created["id"])
        self.call("dave", "POST", f"/api/v1/requests/{request_id}/approve", {})
        issued = self.call(user, "POST", f"/api/v1/requests/{request_id}/credentials", {})
        return request_id, str(issued["user"]), str(issued["password"])


def connect(served: Served, user: str, password: str) -> Connection:
    return psycopg.connect(
        host="127.0.0.1", port=served.proxy_port, user=user, password=password,
        dbname="orders", connect_timeout=10, autocommit=True,
    )  # fmt: skip


OPEN: list[Connection] = []  # closed after each test (the `closes_clients` fixture)


@pytest.fixture(autouse=True)
def closes_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def spread(served: Served, user: str, password: str) -> list[Connection]:
    """CLIENTS connections, and proof that both processes hold some (their audit logs say so)."""
    conns: list[Connection] = []
    for _ in range(CLIENTS):
        conns.append(connect(served, user, password))
        OPEN.append(conns[-1])
    for conn in conns:
        conn.execute("SELECT 1")

    def in_both() -> bool:
        return all("session.started" in served.audit_text(worker) for worker in (0, 1))

    wait_until(in_both, START_TIMEOUT, "sessions in both workers")
    return conns


def test_sessions_spread_and_both_audit_chains_verify(served: Served) -> None:
    api = Api(served)
    _, user, password = api.grant()
    conns = spread(served, user, password)
    for conn in conns:
        conn.close()
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(30) == 0
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", "--config", str(served.config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit.worker1.jsonl" in done.stdout


def test_the_api_lists_and_kills_sessions_in_every_worker(served: Served) -> None:
    api = Api(served)
    _, user, password = api.grant()
    conns = spread(served, user, password)
    listed = api.call("carol", "GET", "/api/v1/sessions")["sessions"]
    assert isinstance(listed, list)
    assert len(listed) == CLIENTS
    for item in listed:  # every session, whichever process holds it
        killed = api.call("carol", "DELETE", f"/api/v1/sessions/{item['id']}", {"reason": "t"})
        assert killed["ended"] is True
    for conn in conns:
        with pytest.raises(psycopg.OperationalError, match="ended by an administrator"):
            conn.execute("SELECT 1")
    assert api.call("carol", "GET", "/api/v1/sessions")["sessions"] == []


def test_a_revocation_ends_sessions_in_every_worker(served: Served) -> None:
    api = Api(served)
    request_id, user, password = api.grant()
    conns = spread(served, user, password)
    api.call("carol", "POST", f"/api/v1/requests/{request_id}/revoke", {"reason": "done"})
    for conn in conns:  # each process's enforcer reads the revocation from the store within 1 s
        deadline = time.monotonic() + 5
        with pytest.raises(psycopg.OperationalError, match="revoked by carol"):  # noqa: PT012
            while time.monotonic() < deadline:
                conn.execute("SELECT 1")
                time.sleep(0.05)


def sleeping(postgres: PostgresServer) -> int:
    with postgres.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' "
            "AND state = 'active'"
        ).fetchone()
    assert row is not None
    count = row[0]
    assert isinstance(count, int)
    return count


def test_a_cancel_reaches_its_session_whichever_worker_accepts_it(
    served: Served, postgres: PostgresServer
) -> None:
    api = Api(served)
    _, user, password = api.grant()
    conns = spread(served, user, password)
    errors: list[BaseException] = []

    def sleep_then_expect_cancel(conn: Connection) -> None:
        try:
            conn.execute("SELECT pg_sleep(30)")
        except psycopg.errors.QueryCanceled:
            return
        except BaseException as exc:
            errors.append(exc)
            return
        errors.append(AssertionError("the query was not cancelled"))

    threads = [threading.Thread(target=sleep_then_expect_cancel, args=(c,)) for c in conns]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    wait_until(
        lambda: sleeping(postgres) == CLIENTS, START_TIMEOUT, "every query running in Postgres"
    )
    for conn in conns:  # each CancelRequest is a new connection: either process may take it
        conn.cancel()
    for thread in threads:
        thread.join(20)
    assert errors == []
    assert time.monotonic() - started < 20
    for conn in conns:
        assert conn.execute("SELECT 2").fetchone() == (2,)
        # The pid the client was given is the backend's own, in either process.
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == (conn.info.backend_pid,)


def test_a_password_issued_after_start_is_masked_by_the_worker_too(served: Served) -> None:
    api = Api(served)
    _, user, password = api.grant()
    conns = spread(served, user, password)
    for conn in conns:
        conn.execute("SELECT %s::text", (password,), prepare=False)
        conn.execute(f"SELECT '{password}'")
    for conn in conns:
        conn.close()
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(30) == 0
    for worker in (0, 1):
        text = served.audit_text(worker)
        assert "query" in text
        assert password not in text


def scram_salt(port: int, user: str) -> bytes:
    """The salt pgwarden offers `user` in its SCRAM server-first-message."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        params = f"user\0{user}\0database\0orders\0\0".encode()
        sock.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
        read_message(sock)  # AuthenticationSASL
        first = b"n,,n=,r=abcdefghijklmnopqrstuvwx"
        body = b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first
        sock.sendall(b"p" + struct.pack("!I", 4 + len(body)) + body)
        kind, payload = read_message(sock)
    assert kind == b"R", payload
    assert payload[:4] == struct.pack("!I", 11), payload  # AuthenticationSASLContinue
    fields = dict(item.split("=", 1) for item in payload[4:].decode().split(","))
    return base64.b64decode(fields["s"])


def read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    header = recv_exactly(sock, 5)
    (length,) = struct.unpack("!I", header[1:])
    return header[:1], recv_exactly(sock, length - 4)


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "pgwarden closed the connection"
        data += chunk
    return data


def test_an_unknown_user_gets_one_salt_from_every_worker(served: Served) -> None:
    salts = {scram_salt(served.proxy_port, "mallory") for _ in range(CLIENTS)}
    assert len(salts) == 1  # a salt per worker would tell mallory from a real user


def test_metrics_carry_every_worker(served: Served) -> None:
    api = Api(served)
    _, user, password = api.grant()
    spread(served, user, password)

    def scrape() -> str:
        url = f"http://127.0.0.1:{served.api_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def active() -> dict[str, float]:
        """Live sessions by worker, as /metrics says (a worker's figures are up to 1 s old)."""
        found = re.findall(r'pgwarden_sessions_active\{[^}]*worker="(\d)"[^}]*\} (\S+)', scrape())
        return {worker: float(count) for worker, count in found}

    wait_until(
        lambda: sum(active().values()) == CLIENTS, START_TIMEOUT, "every session in /metrics"
    )
    assert set(active()) == {"0", "1"}
    text = scrape()
    for family in ("pgwarden_sessions_active gauge", "pgwarden_build_info gauge"):
        assert text.count(f"# TYPE {family}") == 1
    assert re.search(r'pgwarden_build_info\{version="[^"]+",worker="1"\} 1', text)


def worker_pids(served: Served) -> list[int]:
    """The primary's live child processes (its workers), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == served.process.pid and fields[0] != "Z":
            children.append(int(stat.parent.name))
    return children


def test_a_killed_worker_is_started_again(served: Served) -> None:
    (pid,) = worker_pids(served)
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: "worker 1 exited" in served.log_text(), START_TIMEOUT, "the primary to notice"
    )
    wait_until(lambda: worker_pids(served) not in ([], [pid]), START_TIMEOUT, "a new worker 1")
    wait_until(
        lambda: len(WORKER_LISTENING.findall(served.log_text())) == 2,
        START_TIMEOUT, "the new worker to listen",
    )  # fmt: skip
    api = Api(served)
    _, user, password = api.grant()
    spread(served, user, password)  # both processes serve again
    assert served.audit_text(0).count('"kind":"worker.started"') == 2  # the first and the new


def test_sigterm_stops_every_worker(served: Served) -> None:
    api = Api(served)
    _, user, password = api.grant()
    conns = spread(served, user, password)
    (pid,) = worker_pids(served)
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(30) == 0
    for conn in conns:
        with pytest.raises(psycopg.OperationalError, match="shutting down"):
            conn.execute("SELECT 1")
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), START_TIMEOUT, "worker 1 to exit")
    for worker in (0, 1):  # every session's end is in its process's audit log
        text = served.audit_text(worker)
        assert text.count('"session.ended"') == text.count('"session.started"') > 0


def test_a_worker_that_cannot_start_stops_the_server_with_a_clear_error(
    deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    config = deployment.write_files(tmp_path, workers=2)
    (tmp_path / "audit.worker1.jsonl").mkdir()  # worker 1 cannot open its audit log
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False, env=os.environ.copy(),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "pgwarden: a worker process exited before it listened" in done.stderr
    assert "audit.worker1.jsonl" in done.stderr  # the worker's own reason, in the same log


def test_a_worker_stops_when_its_primary_dies(served: Served) -> None:
    api = Api(served)
    _, user, password = api.grant()
    conns = spread(served, user, password)
    (pid,) = worker_pids(served)
    served.process.kill()  # no goodbye: the worker learns it from its channel closing
    served.process.wait(30)
    wait_until(
        lambda: not os.path.exists(f"/proc/{pid}"), START_TIMEOUT, "the orphaned worker to exit"
    )
    messages = []
    for conn in conns:  # the primary's sessions just drop; the worker's are told why
        with pytest.raises(psycopg.OperationalError) as raised:
            conn.execute("SELECT 1")
        messages.append(str(raised.value))
    assert any("pgwarden is shutting down" in message for message in messages), messages
    assert "the primary process is gone; this worker stops" in served.log_text()
