"""`pgwarden serve` as a real process: it starts, relays, and on SIGTERM ends sessions (57P01)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from proxy.clock import SYSTEM_CLOCK
from proxy.config import load_config
from proxy.grants.lifecycle import GrantService
from proxy.grants.store import SqliteStore
from proxy.policy.models import AccessLevelName, TargetName, UserName
from proxy.policy.reload import PolicyHolder
from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.integration

LISTENING = re.compile(r"listening for Postgres clients on 127\.0\.0\.1:(\d+)")
START_TIMEOUT = 30.0


class ServeProcess:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.parent / "serve.log"
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=os.environ.copy(),
        )  # fmt: skip
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if match := LISTENING.search(self.log.read_text(errors="replace")):
                return int(match.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"pgwarden serve did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log_file.close()


@pytest.fixture
def served(deployment: PgwardenDeployment, tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(deployment.write_files(tmp_path))
    try:
        yield process
    finally:
        process.stop()


def grant_credential(config_path: Path) -> tuple[str, str]:
    config = load_config(config_path)
    holder = PolicyHolder.open(config.paths.policy)
    with SqliteStore(config.paths.state) as store:
        grants = GrantService(store, SYSTEM_CLOCK, lambda: holder.current)
        request = grants.create_request(
            UserName("bob"), TargetName("orders"), AccessLevelName("read-only"),
            timedelta(minutes=30), "incident 42",
        )  # fmt: skip
        grants.approve(request.id, UserName("dave"))
        credential = grants.issue_credential(request.id, UserName("bob"))
    return credential.username, credential.password


def backends_of(postgres: PostgresServer, application_prefix: str) -> int:
    with postgres.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
            (application_prefix + "%",),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_sigterm_ends_live_sessions_with_57p01_and_leaves_no_backend(
    served: ServeProcess, postgres: PostgresServer
) -> None:
    user, password = grant_credential(served.config)
    dsn = f"host=127.0.0.1 port={served.port} user={user} password={password} dbname=orders"
    with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
        assert conn.execute("SELECT 42").fetchone() == (42,)
        assert backends_of(postgres, "pgwarden:bob:") == 1
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(START_TIMEOUT) == 0
        with pytest.raises(psycopg.OperationalError, match="pgwarden is shutting down"):
            conn.execute("SELECT 1")
    deadline = time.monotonic() + 10
    while backends_of(postgres, "pgwarden:bob:") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backends_of(postgres, "pgwarden:bob:") == 0
