"""The backstop: a backend that outlives its session is terminated over the control role."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from proxy.policy.models import (
    AccessLevel,
    AccessLevelName,
    ApprovalRule,
    ControlRole,
    SecretRef,
    Target,
    TargetName,
    Upstream,
    UpstreamTlsMode,
)
from proxy.upstream.backstop import terminate_backend
from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.integration


def target_with(postgres: PostgresServer, control: ControlRole | None) -> Target:
    level = AccessLevel(AccessLevelName("ro"), "nobody", SecretRef(env="UNUSED"))
    return Target(
        TargetName("orders"),
        Upstream(postgres.host, postgres.port, postgres.dbname, UpstreamTlsMode.DISABLE),
        {level.name: level},
        max_duration=timedelta(hours=1),
        approval=ApprovalRule(),
        control=control,
    )


@pytest.fixture(scope="module")
def control_role(postgres: PostgresServer) -> ControlRole:
    password = secrets.token_urlsafe(16)
    with postgres.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS pgw_control")
        conn.execute(
            sql.SQL("CREATE ROLE pgw_control LOGIN PASSWORD {}").format(sql.Literal(password))
        )
        conn.execute("GRANT pg_signal_backend TO pgw_control")
    os.environ["PGWARDEN_TEST_CONTROL_PASSWORD"] = password
    return ControlRole("pgw_control", SecretRef(env="PGWARDEN_TEST_CONTROL_PASSWORD"))


def test_the_control_role_terminates_a_lingering_backend(
    postgres: PostgresServer, control_role: ControlRole
) -> None:
    with postgres.connect() as admin:
        # pg_signal_backend cannot signal superusers: the victim is an ordinary role.
        admin.execute("DROP ROLE IF EXISTS pgw_lingering")
        admin.execute("CREATE ROLE pgw_lingering LOGIN PASSWORD 'lingering-pw'")
        with psycopg.connect(postgres.dsn(user="pgw_lingering", password="lingering-pw")) as conn:
            pid = conn.info.backend_pid
            killed = asyncio.run(terminate_backend(target_with(postgres, control_role), pid, None))
            assert killed
            assert wait_gone(admin, pid)
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")


def wait_gone(admin: psycopg.Connection[tuple[object, ...]], pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        if row.fetchone() == (0,):
            return True
        time.sleep(0.02)
    return False


def test_without_a_control_role_it_says_so_and_kills_nothing(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    killed = asyncio.run(terminate_backend(target_with(postgres, None), 12345, None))
    assert not killed
    assert "no control role is configured" in caplog.text
