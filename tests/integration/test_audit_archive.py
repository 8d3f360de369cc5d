"""Audit retention through the real `pgwarden serve` process: rotate, archive, verify.

The log rotates at 4 KiB; while the server runs and a session goes on querying, `pgwarden audit
archive --config` moves all but the newest rotated file away. The remainder verifies on its own
and the archive plus the remainder verify together, before and after a clean stop. Then every
rotated file is archived with the server stopped, and a restarted server continues the chain from
what is left: both verifications still pass.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from proxy.audit.archive import anchor_path
from proxy.audit.records import log_files
from tests.fixtures.pgwarden import PgwardenDeployment
from tests.integration.test_serve_process import ServeProcess, grant_credential

pytestmark = pytest.mark.integration

ROTATED_FILES = 4  # before the first archive
BOUND = 30.0


def pgwarden_audit(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "audit", *map(str, args)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def rotated(log: Path) -> list[Path]:
    return [file for file in log_files(log) if file != log]


def stop(served: ServeProcess) -> None:
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(BOUND) == 0
    served.stop()


def test_rotate_archive_and_verify_through_the_serve_process(
    deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    config = deployment.write_files(tmp_path)
    config.write_text(config.read_text().replace("audit:\n", "audit:\n  max_file_bytes: 4096\n"))
    log, vault = tmp_path / "audit.jsonl", tmp_path / "archive"
    served = ServeProcess(config)
    try:
        user, password = grant_credential(config)
        dsn = f"host=127.0.0.1 port={served.port} user={user} password={password} dbname=orders"
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
            deadline = time.monotonic() + BOUND
            while len(rotated(log)) < ROTATED_FILES:  # rotate
                assert time.monotonic() < deadline, "the audit log did not rotate"
                conn.execute("SELECT %s::text AS padding", ("x" * 200,)).fetchone()
            oldest = rotated(log)[: len(rotated(log)) - 1]
            result = pgwarden_audit("archive", "--config", config, "--to", vault, "--keep", "1")
            assert result.returncode == 0, result.stderr
            assert f"archived {len(oldest)} file(s), records 1-" in result.stdout
            assert {f.name for f in oldest} <= {p.name for p in vault.iterdir()}
            assert not any(file.exists() for file in oldest)
            assert anchor_path(log).exists()
            conn.execute("SELECT 1").fetchone()  # the server goes on writing the chain
            alone = pgwarden_audit("verify", "--config", config)
            assert alone.returncode == 0, alone.stderr
            assert "after the records archived up to seq" in alone.stdout
            together = pgwarden_audit("verify", "--config", config, "--archive", vault)
            assert together.returncode == 0, together.stderr
            assert f"({len(oldest)} archived)" in together.stdout
        stop(served)
    finally:
        served.stop()
    for args in (("--config", config), ("--config", config, "--archive", vault)):
        after_stop = pgwarden_audit("verify", *args)
        assert after_stop.returncode == 0, after_stop.stderr

    everything = pgwarden_audit("archive", "--config", config, "--to", vault, "--keep", "0")
    assert everything.returncode == 0, everything.stderr
    assert rotated(log) == []
    served = ServeProcess(config)  # the restarted server continues from what is left
    try:
        user, password = grant_credential(config)
        dsn = f"host=127.0.0.1 port={served.port} user={user} password={password} dbname=orders"
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
            conn.execute("SELECT 2").fetchone()
        stop(served)
    finally:
        served.stop()
    alone = pgwarden_audit("verify", "--config", config)
    assert alone.returncode == 0, alone.stderr
    together = pgwarden_audit("verify", "--config", config, "--archive", vault)
    assert together.returncode == 0, together.stderr
    missing = pgwarden_audit("verify", "--config", config, "--archive", tmp_path / "nowhere")
    assert missing.returncode == 2  # a directory that is not there is not an empty archive
