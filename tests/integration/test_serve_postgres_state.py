"""Two `pgwarden serve` processes on one PostgreSQL state store (issue 17, first step).

`state: {backend: postgres, dsn_env: ...}`, the state role owning its schema and nothing else
(README "State in PostgreSQL"). Tokens are made with `pgwarden token create` against the
database; alice asks on server A, carol approves on B, alice takes her credential from A and
logs in with psycopg through B, whose second process (`proxy.workers: 2`) opens the same
store; carol revokes on A, and the session on B ends, through B's enforcer (it polls the
shared change counter).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.pgwarden import PgwardenDeployment, port_from_log
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.integration

PROXY_LISTENING = re.compile(r"listening for Postgres clients on 127\.0\.0\.1:(\d+)")
API_LISTENING = re.compile(r"pgwarden API listening on 127\.0\.0\.1:(\d+)")
STATE_DB, STATE_ROLE = "pgwarden_state_serve", "pgw_state_serve"
DSN_ENV = "PGWARDEN_TEST_STATE_DSN"
REVOCATION_DEADLINE = 5.0  # seconds: B's enforcer polls every 0.1 s and reconciles within 1 s
MAX_SESSIONS = 40  # connections made to reach both of B's processes, at most


@dataclass
class Served:
    config: Path
    process: subprocess.Popen[bytes]
    log: Path
    proxy_port: int
    api_port: int

    def call(self, method: str, path: str, token: str, body: object = None) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=30)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            conn.request(method, path, None if body is None else json.dumps(body), headers)
            reply = conn.getresponse()
            return reply.status, json.loads(reply.read())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def state_dsn(postgres: PostgresServer) -> Iterator[str]:
    """A database for the state, and a role that owns its schema there and has nothing else."""
    password = secrets.token_urlsafe(16)
    with postgres.connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {STATE_DB} WITH (FORCE)")
        conn.execute(f"DROP ROLE IF EXISTS {STATE_ROLE}")
        conn.execute(f"CREATE ROLE {STATE_ROLE} LOGIN PASSWORD '{password}'")  # type: ignore[arg-type]
        conn.execute(f"CREATE DATABASE {STATE_DB}")
    with psycopg.connect(postgres.dsn(dbname=STATE_DB), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA pgwarden AUTHORIZATION {STATE_ROLE}")
    yield postgres.dsn(user=STATE_ROLE, password=password, dbname=STATE_DB)
    with postgres.connect() as conn:
        conn.execute(f"DROP DATABASE {STATE_DB} WITH (FORCE)")
        conn.execute(f"DROP ROLE {STATE_ROLE}")


def postgres_config(
    deployment: PgwardenDeployment, directory: Path, workers: int, replica: str
) -> Path:
    """The test deployment's config, with its state in PostgreSQL instead of `paths.state`,
    as replica `replica` (two live replicas never share a name)."""
    config = deployment.write_files(directory, workers=workers)
    text = config.read_text()
    assert "  state: state.db\n" in text
    text = text.replace("  state: state.db\n", "")
    state = f"state:\n  backend: postgres\n  dsn_env: {DSN_ENV}\n  replica: {replica}\n"
    config.write_text(text + state)
    return config


@pytest.fixture(scope="module")
def servers(
    deployment: PgwardenDeployment, state_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Served, Served]]:
    os.environ[DSN_ENV] = state_dsn
    started: list[Served] = []
    try:
        for name, workers in (("a", 1), ("b", 2)):
            directory = tmp_path_factory.mktemp(f"server-{name}")
            config = postgres_config(deployment, directory, workers, name)
            log = directory / "serve.log"
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
                    stdout=sink, stderr=subprocess.STDOUT, env=os.environ.copy(),
                )  # fmt: skip
            started.append(Served(config, process, log, 0, 0))
        for served in started:
            served.proxy_port = port_from_log(PROXY_LISTENING, served.log, served.process)
            served.api_port = port_from_log(API_LISTENING, served.log, served.process)
        yield started[0], started[1]
    finally:
        for served in started:
            served.process.terminate()
        for served in started:
            served.process.wait(30)


def token(served: Served, user: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "token", "create", user, "--config", str(served.config)],
        capture_output=True, text=True, env=os.environ.copy(), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_two_servers_share_grants_and_a_revocation_on_one_ends_the_session_on_the_other(
    servers: tuple[Served, Served],
) -> None:
    a, b = servers
    alice, carol = token(a, "alice"), token(a, "carol")
    status, created = a.call("POST", "/api/v1/requests", alice, {
        "target": "orders", "access_level": "read-only", "duration": "30m", "reason": "ha test",
    })  # fmt: skip
    assert status == 201, created
    status, approved = b.call("POST", f"/api/v1/requests/{created['id']}/approve", carol, {})
    assert (status, approved["state"]) == (200, "active"), approved
    status, credential = a.call("POST", f"/api/v1/requests/{created['id']}/credentials", alice)
    assert status == 201, credential

    dsn = f"host=127.0.0.1 port={b.proxy_port} dbname=orders user=alice sslmode=disable"
    (worker_log,) = b.config.parent.glob("audit.*.worker1.jsonl")  # named by B's replica
    sessions: list[psycopg.Connection[Any]] = []
    try:
        # The kernel spreads connections over B's two processes (SO_REUSEPORT) at random: connect
        # until B's worker holds one too (six at least; the chance that 40 all miss it: 2^-40).
        while len(sessions) < MAX_SESSIONS and (
            len(sessions) < 6 or "session.started" not in worker_log.read_text()
        ):
            session = psycopg.connect(dsn, password=credential["password"], autocommit=True)
            sessions.append(session)
            assert session.execute("SELECT count(*) FROM items").fetchone() is not None
        assert "session.started" in worker_log.read_text()  # B's worker served some, from the store
        status, revoked = a.call("POST", f"/api/v1/requests/{created['id']}/revoke", carol,
                                 {"reason": "incident over"})  # fmt: skip
        assert (status, revoked["state"]) == (200, "revoked"), revoked
        for session in sessions:
            assert_ends_with_the_revocation(session)
    finally:
        for session in sessions:
            session.close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn, password=credential["password"]).close()  # what any client is told


def assert_ends_with_the_revocation(session: psycopg.Connection[Any]) -> None:
    """The session's next query fails with the revocation, within the deadline (bounded)."""
    deadline = time.monotonic() + REVOCATION_DEADLINE
    with pytest.raises(psycopg.OperationalError, match="revoked by carol: incident over"):  # noqa: PT012 - polls until the query fails
        while time.monotonic() < deadline:
            session.execute("SELECT 1")
            time.sleep(0.05)
        pytest.fail(f"the session outlived the revocation by {REVOCATION_DEADLINE} s")
