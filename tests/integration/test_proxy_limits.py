"""pgwarden's limits with real clients: sized for real use, and refused as Postgres refuses.

- With the default limits, 200 concurrent logins from one address (an application server's pool,
  an office behind NAT) all succeed, in bounded time (SECURITY.md row 33 keeps the caps; they must
  not refuse real load).
- Over a cap, `psql` with its default `sslmode=prefer` shows pgwarden's reason — FATAL 53300
  `pgwarden: too many connections from 127.0.0.1 (limit N)` — as it would show Postgres's "sorry,
  too many clients already", not "server sent an error response during SSL exchange" (pgwarden
  answers the SSLRequest, completes TLS and reads the startup packet before it refuses).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from proxy.config import DEFAULT_MAX_PREAUTH_PER_SOURCE, DEFAULT_MAX_SESSIONS_PER_SOURCE
from proxy.net.certs import generate_dev_certificates
from tests.fixtures.adversary import connect, preauth_count, wait_for
from tests.fixtures.clients import PSQL_TIMEOUT, psql_command
from tests.fixtures.pgwarden import RO_ROLE, PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.rawpg import RawPg

pytestmark = pytest.mark.integration

CONCURRENT_LOGINS = 200
# Every login at once, each doing SCRAM on both sides and a backend start: seconds, not minutes.
CONCURRENT_BOUND = 60.0
SMALL_CAP = 2


def test_200_concurrent_logins_from_one_address_succeed_with_the_default_limits(
    pgwarden: RunningPgwarden,
) -> None:
    limits = pgwarden.runtime.config.limits
    assert limits.max_preauth_per_source == DEFAULT_MAX_PREAUTH_PER_SOURCE >= CONCURRENT_LOGINS
    assert limits.max_sessions_per_source == DEFAULT_MAX_SESSIONS_PER_SOURCE >= CONCURRENT_LOGINS
    credential = pgwarden.grant()
    start = threading.Barrier(CONCURRENT_LOGINS)
    release = threading.Barrier(CONCURRENT_LOGINS)

    def log_in(_: int) -> object:
        start.wait()
        with psycopg.connect(pgwarden.dsn(credential)) as conn:
            row = conn.execute("SELECT current_user").fetchone()
            release.wait(CONCURRENT_BOUND)  # all sessions are live at once
            return row

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=CONCURRENT_LOGINS) as pool:
        rows = list(pool.map(log_in, range(CONCURRENT_LOGINS), timeout=CONCURRENT_BOUND))
    assert rows == [(RO_ROLE,)] * CONCURRENT_LOGINS
    assert time.monotonic() - began < CONCURRENT_BOUND
    assert wait_for(lambda: preauth_count(pgwarden) == 0)


@pytest.fixture(scope="module")
def capped_tls_pgwarden(
    deployment: PgwardenDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPgwarden]:
    """pgwarden with a certificate (so sslmode=prefer does TLS) and a tiny per-source cap."""
    certificates = generate_dev_certificates(tmp_path_factory.mktemp("limits-tls"))
    directory: Path = tmp_path_factory.mktemp("pgwarden-capped")
    config = deployment.write_files(
        directory, tls=(certificates.server_cert, certificates.server_key)
    )
    config.write_text(config.read_text() + f"limits: {{max_preauth_per_source: {SMALL_CAP}}}\n")
    with running_pgwarden(config) as instance:
        yield instance


def test_psql_with_sslmode_prefer_shows_the_53300_reason_when_over_a_limit(
    capped_tls_pgwarden: RunningPgwarden,
) -> None:
    warden = capped_tls_pgwarden
    credential = warden.grant()
    idle: list[RawPg] = [connect(warden.port) for _ in range(SMALL_CAP)]
    try:
        assert wait_for(lambda: preauth_count(warden) == SMALL_CAP)
        argv, env = psql_command(
            warden.host, warden.port, credential.username, credential.password,
            ["-c", "SELECT 1"], sslmode="prefer",
        )  # fmt: skip
        result = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=PSQL_TIMEOUT, check=False
        )
    finally:
        for conn in idle:
            conn.close()
    assert result.returncode != 0
    expected = f"FATAL:  pgwarden: too many connections from 127.0.0.1 (limit {SMALL_CAP})"
    assert expected in result.stderr, result.stderr
    assert "SSL exchange" not in result.stderr
    assert wait_for(lambda: preauth_count(warden) == 0)
    argv, env = psql_command(
        warden.host, warden.port, credential.username, credential.password,
        ["-At", "-c", "SELECT current_user"], sslmode="require",
    )  # fmt: skip
    after = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=PSQL_TIMEOUT, check=False
    )
    assert after.stdout.strip() == RO_ROLE, after.stderr  # under the cap again: in, over TLS
