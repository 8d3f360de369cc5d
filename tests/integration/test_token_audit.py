"""API tokens are made and revoked only once the audit log has recorded it (issue 22, item 1).

`pgwarden token create|revoke` write `token.created` / `token.revoked` to the commands' own chain
beside the server's log before the state store changes, then a `lifecycle.outcome`; `audit
verify --config` checks that chain with the others. With the log's disk full (a 2 MiB tmpfs; we
run as root — skipped, saying why, where mounting is not permitted) the command exits 2 with one
line naming the log, and no token exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.served import fill, pgwarden

pytestmark = pytest.mark.integration


def kinds_and_fields(chain: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in chain.read_text().splitlines()]


def test_create_and_revoke_are_recorded_ahead_and_verify(
    deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    config = deployment.write_files(tmp_path)
    created = pgwarden("token", "create", "alice", "--config", str(config), "--json")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)
    revoked = pgwarden("token", "revoke", token["id"], "--config", str(config))
    assert revoked.returncode == 0, revoked.stderr

    chain = tmp_path / "audit.commands.jsonl"
    records = kinds_and_fields(chain)
    story = [r["kind"] for r in records if r["kind"] not in ("audit.opened", "audit.closed")]
    assert story == ["token.created", "lifecycle.outcome", "token.revoked", "lifecycle.outcome"]
    made = next(r for r in records if r["kind"] == "token.created")
    assert (made["token_id"], made["user"]) == (token["id"], "alice")
    assert token["token"] not in chain.read_text()  # the secret never reaches the log
    assert all(r["committed"] for r in records if r["kind"] == "lifecycle.outcome")

    verified = pgwarden("audit", "verify", "--config", str(config))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{chain}: ok:" in verified.stdout


def test_with_the_audit_disk_full_no_token_is_made(
    deployment: PgwardenDeployment, tmp_path: Path, tiny_disk: Path
) -> None:
    config = deployment.write_files(tmp_path)
    audit_log = tiny_disk / "audit.jsonl"
    config.write_text(
        config.read_text().replace("audit_log: audit.jsonl", f"audit_log: {audit_log}")
    )
    fill(tiny_disk)
    refused = pgwarden("token", "create", "alice", "--config", str(config))
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert line.startswith("pgwarden: paths.audit_log: "), line
    assert str(tiny_disk / "audit.commands.jsonl") in line
    assert "No space left on device" in line
    assert line.endswith("; nothing was changed")
    listed = pgwarden("token", "list", "--config", str(config), "--json")
    assert json.loads(listed.stdout) == {"tokens": []}
