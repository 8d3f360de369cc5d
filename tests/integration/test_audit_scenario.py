"""The audit log of a whole story, through the running pgwarden, and its failure mode.

request → approve → credential → login → queries (simple and extended, with parameters) →
expiry kill: the records come in order, `pgwarden audit verify` passes, /metrics matches, and no
known secret appears in the audit log, the application log or /metrics. Then the log's disk
"fills up": new sessions and queries are refused (fail closed) and the alert metric drops.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest

from proxy.audit.fsio import FileSystem
from proxy.grants.requests import IssuedCredential
from proxy.policy.models import AccessLevelName, TargetName, UserName
from tests.fixtures.clock import FakeClock
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden

pytestmark = pytest.mark.integration

GRANT = timedelta(minutes=10)


def wait_for(condition: Callable[[], object], bound: float = 5.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.01)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def grant_through_runtime(warden: RunningPgwarden) -> IssuedCredential:
    """The runtime's own GrantService: the way the API changes the store, so it is audited."""
    grants = warden.runtime.grants
    request = grants.create_request(
        UserName("alice"), TargetName("orders"), AccessLevelName("read-only"), GRANT, "ticket 9"
    )
    grants.approve(request.id, UserName("carol"), "looks fine")
    return grants.issue_credential(request.id, UserName("alice"))


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", str(path),
         "--key-env", "PGWARDEN_TEST_AUDIT_KEY"],
        capture_output=True, text=True, timeout=60, check=False, env=os.environ.copy(),
    )  # fmt: skip


def test_a_whole_story_is_recorded_in_order_verifies_and_leaks_no_secret(
    deployment: PgwardenDeployment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    config = deployment.write_files(tmp_path)
    with running_pgwarden(config, clock=clock) as warden:
        credential = grant_through_runtime(warden)
        with psycopg.connect(warden.dsn(credential), autocommit=True) as conn:
            conn.execute("SELECT count(*) FROM items").fetchone()
            conn.execute("SELECT %s::text, %s::int", ("extended", 42)).fetchone()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"CREATE ROLE sneaky LOGIN PASSWORD '{deployment.ro_password}'")
            conn.execute(f"SELECT '{credential.password}' AS pasted")  # a careless paste
            clock.advance(GRANT + timedelta(seconds=1))
            wait_for(lambda: len(warden.runtime.server.ctx.registry) == 0)
        # The store records the expiry at its next sweep (once a second), and so does the log.
        wait_for(lambda: "grant.expired" in (tmp_path / "audit.jsonl").read_text())
        exposition = generate_latest(warden.runtime.metrics_registry).decode()
    audit_log = tmp_path / "audit.jsonl"
    written = records(audit_log)
    kinds = [str(r["kind"]) for r in written]
    story = ["request.created", "request.approved", "grant.activated", "credential.issued",
             "session.started", "query.batch", "query.batch", "query.batch", "query.batch",
             "session.ended"]  # fmt: skip
    story_seen = [kind for kind in kinds if kind in set(story)]
    assert story_seen[: len(story)] == story
    ended = next(r for r in written if r["kind"] == "session.ended")
    assert ended["reason"] == "expired"
    assert "grant.expired" in kinds
    # One record per round trip (simple, extended, simple, simple), each settled by a later one.
    batches = [r["steps"] for r in written if r["kind"] == "query.batch"]
    assert [[next(iter(step)) for step in steps] for steps in batches] == [
        ["query"], ["parse", "bind", "execute"], ["query"], ["query"],
    ]  # fmt: skip
    params = batches[1][1]["params"]
    assert (len(params), params[0]) == (2, "extended")
    done = {d["n"]: d for r in written for d in r.get("done", [])}
    outcomes = [(done[n]["status"], done[n].get("sqlstate")) for n in (1, 2, 3, 4)]
    assert outcomes == [("ok", None), ("ok", None), ("error", "42501"), ("ok", None)]
    result = verify(audit_log)
    assert result.returncode == 0, result.stdout + result.stderr
    text = audit_log.read_text()
    for secret in (credential.password, deployment.ro_password, deployment.rw_password):
        assert secret not in text
        assert secret not in caplog.text
        assert secret not in exposition
    assert "***" in text
    ended_metric = 'pgwarden_sessions_ended_total{access_level="read-only",reason="expired"'
    assert f'{ended_metric},target="orders"}} 1.0' in exposition


class FullDisk(FileSystem):
    """Every write fails as on a full disk."""

    def write(self, fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_audit_disk_refuses_new_sessions_and_queries(
    deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    with running_pgwarden(deployment.write_files(tmp_path)) as warden:
        credential = grant_through_runtime(warden)
        with psycopg.connect(warden.dsn(credential), autocommit=True) as conn:
            conn.execute("SELECT 1")
            warden.runtime.audit._s.fs = FullDisk()  # the disk fills up under a live session
            with pytest.raises(psycopg.OperationalError, match="audit log cannot be written"):
                conn.execute("SELECT 2")
        with pytest.raises(psycopg.OperationalError, match="audit log cannot be written"):
            psycopg.connect(warden.dsn(credential)).close()
        registry = warden.runtime.metrics_registry
        wait_for(lambda: registry.get_sample_value("pgwarden_audit_healthy") == 0)
        assert (registry.get_sample_value("pgwarden_audit_write_errors_total") or 0) >= 1


def test_with_fsync_always_each_query_waits_for_its_record_and_all_verify(
    deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    config = deployment.write_files(tmp_path, audit_fsync="always")
    with running_pgwarden(config) as warden:
        credential = grant_through_runtime(warden)
        with psycopg.connect(warden.dsn(credential), autocommit=True) as conn:
            for value in range(50):
                assert conn.execute("SELECT %s::int", (value,)).fetchone() == (value,)
            with conn.pipeline():
                cursors = [conn.execute("SELECT %s::int", (v,)) for v in range(20)]
            assert [c.fetchone() for c in cursors] == [(v,) for v in range(20)]
        durable = warden.runtime.audit.durable_seq
    written = records(tmp_path / "audit.jsonl")
    batches = [r for r in written if r["kind"] == "query.batch"]
    assert durable >= batches[-1]["seq"]
    executes = [step for r in batches for step in r["steps"] if "execute" in step]
    assert len(executes) == 70  # every query reached the disk before the database saw it
    assert verify(tmp_path / "audit.jsonl").returncode == 0


def test_record_queries_false_keeps_sessions_but_not_queries(
    deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    config = deployment.write_files(tmp_path, record_queries=False)
    with running_pgwarden(config) as warden:
        credential = grant_through_runtime(warden)
        with psycopg.connect(warden.dsn(credential), autocommit=True) as conn:
            conn.execute("SELECT 1")
    kinds = [str(r["kind"]) for r in records(tmp_path / "audit.jsonl")]
    assert "session.started" in kinds
    assert "session.ended" in kinds
    assert not [kind for kind in kinds if kind.startswith("query.")]
    assert verify(tmp_path / "audit.jsonl").returncode == 0


def test_a_copy_is_recorded_with_its_size_without_its_rows(
    deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    with running_pgwarden(deployment.write_files(tmp_path)) as warden:
        credential = grant_through_runtime(warden)
        received = 0
        with psycopg.connect(warden.dsn(credential), autocommit=True) as conn:
            sql = "COPY (SELECT g, repeat('r', 50) FROM generate_series(1, 20000) g) TO STDOUT"
            with conn.cursor().copy(sql) as copy:
                for data in copy:
                    received += len(data)
    copies = [r for r in records(tmp_path / "audit.jsonl") if r["kind"] == "query.copy"]
    assert len(copies) == 1
    assert copies[0]["direction"] == "out"
    assert copies[0]["bytes"] == received > 1_000_000
    assert "rrrrrrrrrr" not in (tmp_path / "audit.jsonl").read_text()
