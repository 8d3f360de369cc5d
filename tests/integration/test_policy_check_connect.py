"""`pgwarden policy check --connect`: logs in as every mapped role and says what it can do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.integration


def check(policy: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "policy", "check", "--connect", str(policy)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def test_connect_reports_role_capabilities_and_escalations(
    deployment: PgwardenDeployment, postgres: PostgresServer, tmp_path: Path
) -> None:
    deployment.write_files(tmp_path)
    policy = tmp_path / "policy.yaml"
    # Map the read-write level to the superuser: the check must call that out.
    text = policy.read_text().replace(
        "read-write: {role: pgw_orders_rw, password_env: PGWARDEN_TEST_RW_PASSWORD}",
        f"read-write: {{role: {postgres.superuser}, password_env: PGWARDEN_TEST_SUPER_PASSWORD}}",
    )
    policy.write_text(text)
    env = {**os.environ, "PGWARDEN_TEST_SUPER_PASSWORD": postgres.superuser_password}
    result = check(policy, env)
    assert result.returncode == 0, result.stderr
    assert f"level read-write (role {postgres.superuser}): is a superuser" in result.stderr
    assert "level read-only (role pgw_orders_ro)" not in result.stderr  # nothing to warn about
    # Revoked from PUBLIC by the fixture, as the README asks: no note for the read-only role.
    assert "pgw_orders_ro): can create" not in result.stdout


def test_connect_says_when_a_role_cannot_log_in(
    deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    deployment.write_files(tmp_path)
    env = {**os.environ, "PGWARDEN_TEST_RO_PASSWORD": "not-the-password"}
    result = check(tmp_path / "policy.yaml", env)
    assert result.returncode == 0
    assert "level read-only (role pgw_orders_ro): cannot log in" in result.stderr
    assert "password authentication failed" in result.stderr
