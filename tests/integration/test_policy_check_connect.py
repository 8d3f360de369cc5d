"""`pgwarden policy check --connect`: logs in as every mapped role and says what it can do.

Exit 0 only when every role logs in and none can escape its level; otherwise 1, with each
finding printed once (`FILE: target ...: what; how to fix it`) and a last line counting them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.commands.checks import EXIT_INVALID, EXIT_OK
from tests.fixtures.pgwarden import RO_ROLE, RW_ROLE, PgwardenDeployment
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.integration


def check(policy: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "policy", "check", "--connect", str(policy)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def findings(result: subprocess.CompletedProcess[str], policy: Path) -> list[str]:
    """The finding lines, without the last line that counts them."""
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{policy}: target ")]
    assert "Traceback" not in result.stderr
    return lines


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (held, so that nothing else takes it meanwhile)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def test_a_policy_whose_roles_all_log_in_safely_passes(
    deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    deployment.write_files(tmp_path)
    policy = tmp_path / "policy.yaml"
    result = check(policy, dict(os.environ))
    assert result.returncode == EXIT_OK, result.stderr
    assert f"{policy}: valid policy" in result.stdout
    assert findings(result, policy) == []


def test_a_level_mapped_to_a_superuser_fails_with_the_fix(
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
    assert result.returncode == EXIT_INVALID, result.stderr
    # A bootstrap superuser has CREATEROLE, BYPASSRLS and REPLICATION too: each is a finding.
    (finding,) = [f for f in findings(result, policy) if "is a superuser" in f]
    assert f"level read-write (role {postgres.superuser}): is a superuser" in finding
    assert finding.endswith(
        f"ALTER ROLE {postgres.superuser} NOSUPERUSER, or map a role without it"
    )
    # Revoked from PUBLIC by the fixture, as the README asks: no note for the read-only role.
    assert f"{RO_ROLE}): can create" not in result.stdout


def test_a_wrong_password_fails_once_with_how_to_set_it(
    deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    deployment.write_files(tmp_path)
    policy = tmp_path / "policy.yaml"
    env = {**os.environ, "PGWARDEN_TEST_RO_PASSWORD": "not-the-password"}
    result = check(policy, env)
    assert result.returncode == EXIT_INVALID, result.stderr
    (finding,) = findings(result, policy)
    assert f"level read-only (role {RO_ROLE}): the database refused the login" in finding
    assert "password authentication failed" in finding
    assert f"ALTER ROLE {RO_ROLE} PASSWORD" in finding
    assert result.stderr.count("password authentication failed") == 1  # once, not also logged
    assert result.stderr.splitlines()[-1] == (
        f"{policy}: valid policy, but 1 problem(s) with its roles (--connect); "
        "fix them before pgwarden uses it"
    )


def test_an_unreachable_upstream_fails_once_per_role_and_names_the_address(
    deployment: PgwardenDeployment, postgres: PostgresServer, tmp_path: Path, closed_port: int
) -> None:
    deployment.write_files(tmp_path)
    policy = tmp_path / "policy.yaml"
    text = policy.read_text()
    policy.write_text(text.replace(f"port: {postgres.port},", f"port: {closed_port},"))
    result = check(policy, dict(os.environ))
    assert result.returncode == EXIT_INVALID, result.stderr
    found = findings(result, policy)
    assert [line.split(": ", 2)[1] for line in found] == [
        f"target orders level read-only (role {RO_ROLE})",
        f"target orders level read-write (role {RW_ROLE})",
    ]
    for line in found:
        assert "could not connect to the server" in line
        assert f"check that PostgreSQL runs at 127.0.0.1:{closed_port}" in line
    assert result.stderr.count("could not connect") == 2  # once each, not also logged
