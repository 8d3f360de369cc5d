"""The whole story as people live it: `pgwarden serve` and the CLI as processes, and real psql.

Tokens are made on the "server host" (`pgwarden token create --config`), then alice asks, carol
approves, alice connects with psql through the proxy, and carol revokes — the psql session that
was running ends with the revocation message. `pgwarden psql` runs psql with the credential in its
environment; `sessions` lists the session and `kill` ends it; `request --wait` waits for the
decision; a revoked token stops working.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.served import Served, serving

pytestmark = pytest.mark.integration

PSQL = shutil.which("psql")


@pytest.fixture(scope="module")
def served(
    deployment: PgwardenDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("e2e")
    with serving(deployment.write_files(directory), directory / "state.db") as running:
        yield running


class People:
    """Runs `pgwarden ...` as a subprocess, as a given user (their token in PGWARDEN_TOKEN)."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.tokens: dict[str, str] = {}

    def token(self, user: str) -> str:
        if user not in self.tokens:
            done = self.server_side("token", "create", user)
            assert done.returncode == 0, done.stderr
            self.tokens[user] = done.stdout.strip()
        return self.tokens[user]

    def server_side(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return _run([*argv, "--config", str(self.served.config)], os.environ.copy())

    def env(self, user: str) -> dict[str, str]:
        return {**os.environ, "PGWARDEN_URL": self.served.url, "PGWARDEN_TOKEN": self.token(user),
                "XDG_CONFIG_HOME": "/nonexistent", "PGCONNECT_TIMEOUT": "10"}  # fmt: skip

    def run(self, user: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return _run(list(argv), self.env(user))

    def json(self, user: str, *argv: str) -> dict[str, object]:
        done = self.run(user, *argv, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        document: dict[str, object] = json.loads(done.stdout)
        return document

    def start(self, user: str, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "proxy", *argv], env=self.env(user),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def active_request(self, user: str = "alice", approver: str = "carol") -> str:
        created = self.json(user, "request", "orders", "--access", "read-only", "--duration",
                            "30m", "--reason", "incident 42")  # fmt: skip
        request_id = str(created["id"])
        assert self.run(approver, "approve", request_id).returncode == 0
        return request_id

    def wait_for_session(self, viewer: str, user: str) -> str:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            sessions = self.json(viewer, "sessions")["sessions"]
            assert isinstance(sessions, list)
            mine = [s for s in sessions if s["user"] == user]
            if mine:
                return str(mine[0]["id"])
            time.sleep(0.1)
        raise AssertionError(f"no live session of {user} appeared")


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *argv], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def people(served: Served) -> People:
    return People(served)


def _psql(credential: dict[str, object], sql: str) -> tuple[list[str], dict[str, str]]:
    assert PSQL is not None
    env = {**os.environ, "PGPASSWORD": str(credential["password"]), "PGCONNECT_TIMEOUT": "10"}
    where = ["-h", str(credential["host"]), "-p", str(credential["port"]),
             "-U", str(credential["user"]), "-d", str(credential["database"])]  # fmt: skip
    return [PSQL, "-X", "-At", "-v", "ON_ERROR_STOP=1", *where, "-c", sql], env


@pytest.mark.skipif(PSQL is None, reason="needs the psql client")
def test_request_approve_connect_and_revoke_end_the_session(people: People) -> None:
    created = people.json("alice", "request", "orders", "--access", "read-only",
                          "--duration", "30m", "--reason", "incident 42")  # fmt: skip
    request_id = str(created["id"])
    assert created["state"] == "pending"

    own = people.run("alice", "approve", request_id)
    assert own.returncode == 1
    assert f"you cannot approve your own request {request_id}" in own.stderr
    peek = people.run("bob", "show", request_id)  # another requester: as if it did not exist
    assert peek.returncode == 1
    assert f"no request {request_id}" in peek.stderr

    approved = people.run("carol", "approve", request_id, "--comment", "go ahead")
    assert approved.returncode == 0, approved.stderr
    assert f"request {request_id} is active" in approved.stdout

    credential = people.json("alice", "credentials", request_id)
    assert set(credential) >= {"user", "password", "host", "port", "database", "dsn",
                               "expires_at"}  # fmt: skip
    assert (credential["host"], credential["port"]) == ("127.0.0.1", people.served.proxy_port)
    argv, env = _psql(credential, "SELECT count(*) > 0 FROM items")
    query = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert (query.returncode, query.stdout.strip()) == (0, "t"), query.stderr
    via_dsn = subprocess.run([str(PSQL), "-X", "-At", str(credential["dsn"]), "-c", "SELECT 1"],
                             capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert via_dsn.stdout.strip() == "1", via_dsn.stderr

    argv, env = _psql(credential, "SELECT pg_sleep(30)")
    long_running = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        people.wait_for_session("carol", "alice")
        revoked = people.run("carol", "revoke", request_id, "--reason", "incident over")
        assert revoked.returncode == 0, revoked.stderr
        _, stderr = long_running.communicate(timeout=15)
    finally:
        long_running.kill()
    assert long_running.returncode != 0
    assert 'access to "orders" (read-only) was revoked by carol: incident over' in stderr
    shown = people.json("alice", "show", request_id)
    assert (shown["state"], shown["closed_by"]) == ("revoked", "carol")


@pytest.mark.skipif(PSQL is None, reason="needs the psql client")
def test_pgwarden_psql_runs_psql_and_kill_ends_its_session(people: People) -> None:
    request_id = people.active_request()
    quick = people.run("alice", "psql", request_id, "--", "-X", "-At", "-c", "SELECT 1")
    assert (quick.returncode, quick.stdout.strip()) == (0, "1"), quick.stderr

    sleeper = people.start("alice", "psql", request_id, "--", "-X", "-c", "SELECT pg_sleep(30)")
    try:
        session_id = people.wait_for_session("carol", "alice")
        listed = people.run("carol", "sessions")
        assert session_id in listed.stdout
        assert listed.stdout.splitlines()[0].split()[:2] == ["SESSION", "USER"]
        assert "PGPASSWORD" not in " ".join(sleeper.args)  # type: ignore[arg-type]
        killed = people.run("carol", "kill", session_id, "--reason", "runaway query")
        assert killed.returncode == 0, killed.stderr
        assert killed.stdout.strip() == (
            f"session {session_id} of alice on orders (read-only) ended"
        )
        _, stderr = sleeper.communicate(timeout=15)
    finally:
        sleeper.kill()
    assert sleeper.returncode != 0
    assert "pgwarden: session ended by an administrator: runaway query" in stderr
    assert people.json("carol", "sessions")["sessions"] == []


def test_request_wait_returns_once_approved_and_a_revoked_token_stops_working(
    people: People,
) -> None:
    people.token("dave")
    waiting = people.start("bob", "request", "orders", "--access", "read-only", "--duration",
                           "10m", "--reason", "deploy check", "--wait")  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        pending: list[object] = []
        while not pending and time.monotonic() < deadline:
            found = people.json("dave", "requests", "--state", "pending")["requests"]
            assert isinstance(found, list)
            pending = [r["id"] for r in found if r["requester"] == "bob"]
            time.sleep(0.1)
        assert pending, "bob's request never showed up"
        assert people.run("dave", "approve", str(pending[0])).returncode == 0
        stdout, stderr = waiting.communicate(timeout=20)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, stderr
    assert f"request {pending[0]} is active" in stdout

    listed = people.server_side("token", "list", "--json")
    tokens = json.loads(listed.stdout)["tokens"]
    bobs = [t for t in tokens if t["user"] == "bob" and t["revoked_at"] is None]
    assert len(bobs) == 1
    assert people.tokens["bob"] not in listed.stdout
    assert people.server_side("token", "revoke", bobs[0]["id"]).returncode == 0
    refused = people.run("bob", "requests")
    assert refused.returncode == 1
    assert "this token was revoked" in refused.stderr
    unknown = people.server_side("token", "create", "nobody")
    assert unknown.returncode == 1
    assert "'nobody' is not a user in the policy" in unknown.stderr
