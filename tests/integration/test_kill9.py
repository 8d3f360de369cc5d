"""pgwarden killed with kill -9 while a query runs: no backend outlives its grant, and no write
after the grant's end commits (issue 22, item 2).

Each trial runs `pgwarden serve` as a process, gives alice a read-write grant of GRANT_SECONDS,
starts `SELECT pg_sleep(SLEEP_SECONDS); INSERT INTO items ...` through it (the INSERT would
commit after the grant's end), kills pgwarden with SIGKILL while pg_sleep runs, and watches the
backend from a superuser connection. Three ways:

- `no restart`: the backend's client_connection_check_interval (1 s) notices the closed socket;
- `restart`: pgwarden is started again at once (as systemd would), the same;
- `sweep`: the client had turned the check off (`SET client_connection_check_interval = 0`), so
  only the restarted pgwarden's sweep of leftover backends can end it, before it listens.

`make test` runs one trial of each; PGWARDEN_KILL9_TRIALS=10 (with `-s`) measures, printing
crash -> backend gone per trial. The only timing asserted is the issue's bound (2 s) for the
first two; `sweep` depends on how fast the process is restarted and is asserted by order: the
backend is gone before the restarted pgwarden listens. Each mode runs on each state store
(`[sqlite]`, `[postgres]`: a schema of the test's own, which the restarted process finds as it was).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from proxy.grants.requests import IssuedCredential
from proxy.policy.models import AccessLevelName, TargetName, UserName
from tests.fixtures.clients import PgwardenProcess, pgwarden_process, superuser_orders
from tests.fixtures.pg_state import PgState
from tests.fixtures.pgwarden import TARGET_DB, PgwardenDeployment
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.state_backends import BOTH_STORES

pytestmark = [pytest.mark.integration, BOTH_STORES]

TRIALS = int(os.environ.get("PGWARDEN_KILL9_TRIALS", "1"))
GRANT_SECONDS = 4.0
SLEEP_SECONDS = 5.0  # the INSERT would run about 1.5 s after the grant's end
BOUND = 2.0  # seconds from the crash to the backend gone: the issue's bound
POLL = 0.01  # seconds between looks at pg_stat_activity
WAIT = 15.0  # any wait in a trial, at most
MODES = ("no restart", "restart", "sweep")


@dataclass
class Trial:
    pid: int = 0
    killed_at: float = 0.0
    gone_at: float | None = None

    @property
    def gone_after(self) -> float:
        assert self.gone_at is not None, "the backend never went away"
        return self.gone_at - self.killed_at


def short_grant(warden: PgwardenProcess) -> IssuedCredential:
    request = warden.grants.create_request(
        UserName("alice"), TargetName(TARGET_DB), AccessLevelName("read-write"),
        timedelta(seconds=GRANT_SECONDS), "kill -9 trial",
    )  # fmt: skip
    warden.grants.approve(request.id, UserName("carol"), "ok")
    return warden.grants.issue_credential(request.id, UserName("alice"))


def dsn(warden: PgwardenProcess, credential: IssuedCredential) -> str:
    return (
        f"host={warden.host} port={warden.port} dbname={TARGET_DB} user={credential.username} "
        f"password={credential.password} sslmode=disable connect_timeout=10"
    )


def backend_count(su: psycopg.Connection[tuple[object, ...]], pid: int, sleeping: bool) -> int:
    extra = " AND wait_event = 'PgSleep'" if sleeping else ""
    row = su.execute(f"SELECT count(*) FROM pg_stat_activity WHERE pid = %s{extra}", (pid,))
    (count,) = row.fetchone() or (0,)
    return int(str(count))


def poll_until(predicate: Callable[[], bool]) -> float | None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(POLL)
    return None


def run_query(conn: psycopg.Connection[tuple[object, ...]], marker: str) -> None:
    """In a thread: the long query whose INSERT must never commit (pgwarden dies under it)."""
    with contextlib.suppress(psycopg.Error):  # expected: pgwarden went away
        conn.execute(
            f"SELECT pg_sleep({SLEEP_SECONDS}); INSERT INTO items (name) VALUES ('{marker}')"
        )


def one_trial(mode: str, config: Path, postgres: PostgresServer) -> Trial:
    trial = Trial()
    marker = f"kill9-{secrets.token_hex(6)}"
    with superuser_orders(postgres) as su, pgwarden_process(config) as warden:
        credential = short_grant(warden)
        grant_ends = time.monotonic() + GRANT_SECONDS
        conn = psycopg.connect(dsn(warden, credential), autocommit=True)
        try:
            trial.pid = conn.info.backend_pid
            if mode == "sweep":
                conn.execute("SET client_connection_check_interval = 0")
            client = threading.Thread(target=run_query, args=(conn, marker), daemon=True)
            client.start()
            assert poll_until(lambda: backend_count(su, trial.pid, sleeping=True) == 1)
            warden.process.kill()
            trial.killed_at = time.monotonic()
            watcher = threading.Thread(target=lambda: watch(trial, postgres), daemon=True)
            watcher.start()
            if mode != "no restart":
                with pgwarden_process(config) as again:
                    if mode == "sweep":  # it ended the backend, and before it listened
                        swept = f"terminated backend {trial.pid} "
                        assert any(swept in line for line in again.log_lines)
                        assert backend_count(su, trial.pid, sleeping=False) == 0
            watcher.join(WAIT)
            client.join(WAIT)
        finally:
            conn.close()
        # Past the moment the INSERT would have run, and the grant's end: nothing committed.
        time.sleep(max(0.0, grant_ends + SLEEP_SECONDS - GRANT_SECONDS - time.monotonic()))
        assert time.monotonic() > grant_ends
        rows = su.execute("SELECT count(*) FROM items WHERE name = %s", (marker,)).fetchone()
        assert rows == (0,), "a write after the grant's end committed"
    return trial


def watch(trial: Trial, postgres: PostgresServer) -> None:
    with superuser_orders(postgres) as su:
        trial.gone_at = poll_until(lambda: backend_count(su, trial.pid, sleeping=False) == 0)


@pytest.mark.parametrize("mode", MODES)
def test_no_backend_outlives_its_grant_after_kill_9(
    mode: str,
    deployment: PgwardenDeployment,
    postgres: PostgresServer,
    tmp_path: Path,
    fresh_state_store: PgState | None,
) -> None:
    config = deployment.write_files(tmp_path, control=True, state=fresh_state_store)
    figures: list[float] = []
    for _ in range(TRIALS):
        trial = one_trial(mode, config, postgres)
        figures.append(trial.gone_after)
        if mode != "sweep":
            assert trial.gone_after <= BOUND
    print(
        f"\nkill -9, {mode}, state in {'SQLite' if fresh_state_store is None else 'PostgreSQL'}: "
        "crash -> backend gone over "
        f"{len(figures)} trial(s): "
        f"min {min(figures):.3f} s, median {statistics.median(figures):.3f} s, "
        f"max {max(figures):.3f} s; each: {', '.join(f'{f:.3f}' for f in figures)}"
    )
