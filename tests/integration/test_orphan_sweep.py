"""At start, pgwarden ends the backends a previous run left behind: the mapped roles' backends on
each target with a control role, and nothing else (another role, another database, a superuser,
the sweep's own connection). Each is logged, counted and audited; without a control role, or
with the database out of reach, the start goes on and says so."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from proxy.policy.models import (
    AccessLevel,
    AccessLevelName,
    ApprovalRule,
    ControlRole,
    Policy,
    SecretRef,
    Target,
    TargetName,
    Upstream,
    UpstreamTlsMode,
)
from proxy.upstream.orphans import sweep_orphans
from tests.fixtures.clients import superuser_orders, wait_until
from tests.fixtures.pgwarden import (
    CONTROL_ROLE,
    RO_ROLE,
    RW_ROLE,
    TARGET_DB,
    PgwardenDeployment,
    running_pgwarden,
)
from tests.fixtures.postgres import PostgresServer, free_loopback_port

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[tuple[object, ...]]


def target(postgres: PostgresServer, *, control: bool = True, port: int | None = None) -> Target:
    levels = [
        AccessLevel(AccessLevelName("read-only"), RO_ROLE, SecretRef(env="UNUSED")),
        AccessLevel(AccessLevelName("read-write"), RW_ROLE, SecretRef(env="UNUSED")),
    ]
    return Target(
        TargetName("orders"),
        Upstream(postgres.host, port or postgres.port, TARGET_DB, UpstreamTlsMode.DISABLE),
        {level.name: level for level in levels},
        max_duration=timedelta(hours=1),
        approval=ApprovalRule(),
        control=ControlRole(CONTROL_ROLE, SecretRef(env="PGWARDEN_TEST_CONTROL_PW"))
        if control
        else None,
    )


def policy_of(*targets: Target) -> Policy:
    return Policy(users={}, targets={t.name: t for t in targets})


@contextmanager
def backends(
    deployment: PgwardenDeployment, *who: tuple[str, str]
) -> Iterator[dict[tuple[str, str], Conn]]:
    """Direct connections as (role, database): what a crashed pgwarden (or anyone) left open."""
    passwords = {RO_ROLE: deployment.ro_password, RW_ROLE: deployment.rw_password}
    postgres = deployment.postgres
    with ExitStack() as stack:
        opened: dict[tuple[str, str], Conn] = {}
        for role, database in who:
            dsn = (
                postgres.dsn(dbname=database)
                if role == "superuser"
                else postgres.dsn(user=role, password=passwords[role], dbname=database)
            )
            opened[(role, database)] = stack.enter_context(psycopg.connect(dsn, autocommit=True))
        yield opened


def alive(postgres: PostgresServer, pid: int) -> bool:
    with superuser_orders(postgres) as su:
        row = su.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row == (1,)


@pytest.fixture(autouse=True)
def _control_password(deployment: PgwardenDeployment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGWARDEN_TEST_CONTROL_PW", deployment.control_password)


def test_the_mapped_roles_backends_are_ended_and_nothing_else(
    deployment: PgwardenDeployment, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    mapped = [(RO_ROLE, TARGET_DB), (RW_ROLE, TARGET_DB)]
    spared = [(RO_ROLE, postgres.dbname), ("superuser", TARGET_DB)]
    with backends(deployment, *mapped, *spared) as opened:
        pids = {key: conn.info.backend_pid for key, conn in opened.items()}
        with caplog.at_level(logging.WARNING, "proxy.upstream.orphans"):
            orphans = asyncio.run(sweep_orphans(policy_of(target(postgres))))
        assert sorted(o.process_id for o in orphans) == sorted(pids[key] for key in mapped)
        assert {(o.role, o.target) for o in orphans} == {(RO_ROLE, "orders"), (RW_ROLE, "orders")}
        for key in mapped:  # gone once the sweep returns: before pgwarden would listen
            assert not alive(postgres, pids[key]), key
        for key in spared:
            assert alive(postgres, pids[key]), key
    for orphan in orphans:
        assert f"terminated backend {orphan.process_id} (role '{orphan.role}'" in caplog.text


def test_without_a_control_role_nothing_is_ended(
    deployment: PgwardenDeployment, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    with backends(deployment, (RO_ROLE, TARGET_DB)) as opened:
        with caplog.at_level(logging.INFO, "proxy.upstream.orphans"):
            orphans = asyncio.run(sweep_orphans(policy_of(target(postgres, control=False))))
        assert orphans == []
        assert alive(postgres, opened[(RO_ROLE, TARGET_DB)].info.backend_pid)
    assert "has no control role" in caplog.text


def test_an_unreachable_database_is_reported_and_the_rest_swept(
    deployment: PgwardenDeployment, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    gone = target(postgres, port=free_loopback_port())
    gone = Target(TargetName("gone"), gone.upstream, gone.access_levels, gone.max_duration,
                  gone.approval, control=gone.control)  # fmt: skip
    with backends(deployment, (RO_ROLE, TARGET_DB)) as opened:
        started = time.monotonic()
        orphans = asyncio.run(sweep_orphans(policy_of(gone, target(postgres))))
        assert time.monotonic() - started < 5
        assert [o.process_id for o in orphans] == [opened[(RO_ROLE, TARGET_DB)].info.backend_pid]
    assert "could not end backends a previous run of pgwarden left on target 'gone'" in caplog.text


def test_a_starting_pgwarden_ends_counts_and_audits_what_was_left(
    deployment: PgwardenDeployment, postgres: PostgresServer, tmp_path: Path
) -> None:
    config = deployment.write_files(tmp_path, control=True)
    with backends(deployment, (RW_ROLE, TARGET_DB)) as opened:
        pid = opened[(RW_ROLE, TARGET_DB)].info.backend_pid
        with running_pgwarden(config) as warden:
            assert not alive(postgres, pid)  # before the first client could log in
            registry = warden.runtime.metrics_registry
            ended = registry.get_sample_value(
                "pgwarden_orphan_backends_ended_total", {"target": "orders"}
            )
            assert ended == 1
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    swept = [r for r in records if r["kind"] == "backend.orphan_ended"]
    assert len(swept) == 1
    assert swept[0]["backend_process_id"] == pid
    assert swept[0]["role"] == RW_ROLE
    assert swept[0]["target"] == "orders"


def test_a_clean_restart_finds_nothing_to_end(
    deployment: PgwardenDeployment, postgres: PostgresServer, tmp_path: Path
) -> None:
    config = deployment.write_files(tmp_path, control=True)
    with running_pgwarden(config) as warden:
        credential = warden.grant()
        with psycopg.connect(warden.dsn(credential), autocommit=True) as conn:
            pid = conn.info.backend_pid
            assert conn.execute("SELECT 1").fetchone() == (1,)
        wait_until(lambda: not alive(postgres, pid), 5, "the session's backend to end")
    with running_pgwarden(config) as warden:
        registry = warden.runtime.metrics_registry
        assert not registry.get_sample_value(
            "pgwarden_orphan_backends_ended_total", {"target": "orders"}
        )
