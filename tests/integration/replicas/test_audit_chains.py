"""Audit chains of replicas: two `pgwarden serve` replicas writing into one directory (issue 17).

Replicas a and b share the state store and one audit directory (as chains shipped from their
hosts would be gathered): each writes its own chain, named by it (`audit.a.jsonl`,
`audit.b.jsonl`, and the token commands' `audit.a.commands.jsonl`), whose `audit.opened` names
that file. `pgwarden audit verify --config` verifies them all, each line led by its replica, and
checks them against the store's replica registry: a registered replica without a chain is named
and fails the run, unless `--allow-missing` excuses it; a tampered chain is named with its
replica; a store without a registry, or out of reach, is said to be so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.pg_state import new_schema_name
from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.postgres import free_loopback_port
from tests.fixtures.replicas import (
    Replica,
    Replicas,
    launch,
    stop,
    wait_started,
    write_config,
    write_files,
)
from tests.fixtures.state_cluster import StateCluster

NAMES = ("a", "b")
T0 = datetime(2026, 12, 7, 1, 2, tzinfo=UTC)
T1 = datetime(2026, 12, 7, 1, 4, tzinfo=UTC)
# The registry as cluster_context.md documents it, for a store whose migration has not got it.
REGISTRY = """CREATE TABLE IF NOT EXISTS replicas (
    id text COLLATE "C" PRIMARY KEY, slot integer UNIQUE, proxy_address text NOT NULL,
    api_address text NOT NULL, started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL, stopped_at timestamptz)"""
REGISTER = (
    "INSERT INTO replicas (id, slot, proxy_address, api_address, started_at, heartbeat_at, "
    "stopped_at) VALUES (%s, %s, '127.0.0.1:1', '127.0.0.1:2', %s, %s, %s) "
    "ON CONFLICT (id) DO NOTHING"
)


@dataclass
class SharedAudit:
    """The replicas (stopped by now), the directory of their chains, and the state schema."""

    replicas: Replicas
    directory: Path
    schema: str

    def config(self, name: str = "a") -> Path:
        return self.replicas[name].config

    def chains(self) -> list[str]:
        return sorted(path.name for path in self.directory.glob("*.jsonl"))

    def registry(self, statement: str, *params: Any) -> None:
        """A statement on the registry, as the state database's superuser."""
        with psycopg.connect(self.replicas.state.server.dsn(), autocommit=True) as conn:
            conn.execute("SELECT set_config('search_path', %s, false)", (self.schema,))
            conn.execute(statement, params)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def shared(
    deployment: PgwardenDeployment,
    state_cluster: StateCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> SharedAudit:
    """Replicas a and b, run with one audit directory: a grant asked on a, approved on b, issued
    on a and used through b; then stopped cleanly."""
    root = tmp_path_factory.mktemp("audit-chains")
    schema = new_schema_name("audit_chains")
    state_cluster.new_schema(schema)
    policy, dsn_file = write_files(deployment, root, state_cluster.role_dsn())
    directory = root / "audit"
    directory.mkdir()
    tokens: dict[str, str] = {}
    made = Replicas({}, state_cluster, schema, deployment.postgres)
    for name in NAMES:
        replica = Replica(name, root / name, free_loopback_port(), free_loopback_port(), tokens)
        write_config(replica, policy, dsn_file, schema, None)
        text = replica.config.read_text()
        replica.config.write_text(
            text.replace("audit_log: audit.jsonl", f"audit_log: {directory / 'audit.jsonl'}")
        )
        made.replicas[name] = replica
    try:
        for replica in made:
            launch(replica)
        for replica in made:
            wait_started(replica)
        credential = made.grant(via=("a", "b", "a"))
        assert made.session("b", credential).execute("SELECT 1").fetchone() == (1,)
    finally:
        made.close_sessions()
        for replica in made:
            stop(replica)
    audit = SharedAudit(made, directory, schema)
    audit.registry(REGISTRY)  # a no-op where the store's migration made it
    for slot, name in enumerate(NAMES, start=60):  # where the replicas did not register
        audit.registry(REGISTER, name, slot, T0, T1, None)
    return audit


def verify(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", *map(str, argv)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def first_record(chain: Path) -> dict[str, Any]:
    with chain.open("rb") as lines:
        record: dict[str, Any] = json.loads(lines.readline())
    return record


def test_two_replicas_sharing_a_directory_write_two_chains_that_verify(
    shared: SharedAudit,
) -> None:
    chains = shared.chains()  # and the token commands' of whichever replica made a token
    assert {"audit.a.jsonl", "audit.b.jsonl", "audit.a.commands.jsonl"} <= set(chains)
    assert set(chains) <= {f"audit.{name}{process}.jsonl" for name in NAMES
                           for process in ("", ".commands")}  # fmt: skip
    for name in ("a", "b"):
        opened = first_record(shared.directory / f"audit.{name}.jsonl")
        assert (opened["kind"], opened["file"]) == ("audit.opened", f"audit.{name}.jsonl")
    b_chain = (shared.directory / "audit.b.jsonl").read_text()
    assert '"kind":"session.started"' in b_chain  # b served the session, and recorded it there
    done = verify("--config", shared.config())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name in ("audit.a.jsonl", "audit.a.commands.jsonl"):
        assert any(line.startswith(f"replica a: {shared.directory / name}: ok: ") for line in lines)
    assert any(line.startswith(f"replica b: {shared.directory / 'audit.b.jsonl'}: ok: ")
               for line in lines)  # fmt: skip
    assert lines[-1].startswith("registry: replicas a, b in postgresql://127.0.0.1:")
    assert lines[-1].endswith("; each has its chain here")


def test_a_registered_replica_without_a_chain_is_named_and_fails_unless_allowed(
    shared: SharedAudit,
) -> None:
    shared.registry(REGISTER, "c", 62, T0, T1, T1)
    try:
        done = verify("--config", shared.config("b"))
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.strip() == (
            f"replica c: FAILED: no audit chain found in {shared.directory} (started 2026-12-07 "
            "01:02:00 UTC, last seen 2026-12-07 01:04:00 UTC, stopped 2026-12-07 01:04:00 UTC)"
        )
        assert done.stdout.splitlines()[-1].endswith("; missing: c")
        allowed = verify("--config", shared.config("b"), "--allow-missing", "c")
        assert allowed.returncode == 0, allowed.stderr
        assert "replica c: no audit chain found in" in allowed.stdout
    finally:
        shared.registry("DELETE FROM replicas WHERE id = 'c'")


def test_tampering_with_one_replicas_chain_is_named_with_its_replica(
    shared: SharedAudit, tmp_path: Path
) -> None:
    gathered = tmp_path / "gathered"
    shutil.copytree(shared.directory, gathered)
    chain = gathered / "audit.b.jsonl"
    lines = chain.read_bytes().splitlines(keepends=True)
    at = lines[1].index(b'"ts":"') + 6
    lines[1] = lines[1][:at] + b"1" + lines[1][at + 1 :]  # the year of record 2: 1026
    chain.write_bytes(b"".join(lines))
    done = verify("--config", shared.config(), gathered / "audit.jsonl")
    assert done.returncode == 1
    assert done.stderr.startswith(f"replica b: {chain}: FAILED: audit.b.jsonl:2: seq 2: mac ")
    assert f"replica a: {gathered / 'audit.a.jsonl'}: ok: " in done.stdout


def test_a_store_without_a_registry_says_which_replicas_are_expected_is_not_known(
    shared: SharedAudit, tmp_path: Path
) -> None:
    empty = new_schema_name("no_registry")
    shared.replicas.state.new_schema(empty)
    config = tmp_path / "pgwarden.yaml"
    text = shared.config().read_text()
    config.write_text(text.replace(f"schema: {shared.schema}", f"schema: {empty}"))
    done = verify("--config", config)
    assert done.returncode == 0, done.stderr
    assert f"(schema {empty}) has no replica registry yet: which replicas should have a chain " \
           "here is not known" in done.stdout  # fmt: skip
    assert done.stdout.count(": ok: ") == len(shared.chains())


def test_a_registry_out_of_reach_fails_the_run_after_the_chains_are_verified(
    shared: SharedAudit, tmp_path: Path
) -> None:
    dsn = tmp_path / "state.dsn"
    dsn.touch(mode=0o600)
    dsn.write_text(f"host=127.0.0.1 port={free_loopback_port()} dbname=x user=x password=s3cr3t\n")
    config = tmp_path / "pgwarden.yaml"
    config.write_text(
        "\n".join(
            f"  dsn_file: {dsn}" if line.startswith("  dsn_file:") else line
            for line in shared.config().read_text().splitlines()
        )
    )
    done = verify("--config", config)
    assert done.returncode == 2
    assert done.stdout.count(": ok: ") == len(shared.chains())
    assert "pgwarden: cannot read the replica registry in postgresql://127.0.0.1:" in done.stderr
    assert "whether a replica's chain is missing is not known" in done.stderr
    assert "s3cr3t" not in done.stderr
