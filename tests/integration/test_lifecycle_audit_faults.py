"""No lifecycle action proceeds unaudited (issue 22, item 1), through a real `pgwarden serve`.

The audit log's disk fills up (a 2 MiB tmpfs under the log; we run as root — skipped, saying
why, where mounting is not permitted): a request, an approval, a credential and a revocation are
each refused with a 503 saying so, and nothing changes in the state store. Space back, the log
resumes by itself and the same actions go through. The log then verifies, each action's records
settled by a `lifecycle.outcome` written after its commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.clients import wait_until
from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.served import fill, readiness, serving, verify_audit

pytestmark = pytest.mark.integration

RECOVERED_WITHIN = 5.0  # seconds: the sink retries its disk about once a second
NOT_AUDITED = (
    "the audit log cannot be written; requests, approvals, credentials and revocations are "
    "refused until it can (to end a session now: pgwarden kill)"
)


def test_a_full_audit_disk_refuses_every_lifecycle_action_and_changes_nothing(
    deployment: PgwardenDeployment, tmp_path: Path, tiny_disk: Path
) -> None:
    config = deployment.write_files(tmp_path)
    audit_log = tiny_disk / "audit.jsonl"
    config.write_text(
        config.read_text().replace("audit_log: audit.jsonl", f"audit_log: {audit_log}")
    )
    with serving(config, tmp_path / "state.db") as served:
        for user in ("alice", "bob", "carol"):
            served.token(user)
        active_id, _dsn = served.active_grant()
        status, pending = served.call("POST", "/api/v1/requests", "bob", {
            "target": "orders", "access_level": "read-only", "duration": "30m",
            "reason": "ticket 7"})  # fmt: skip
        assert status == 201, pending
        filler = fill(tiny_disk)
        wait_until(lambda: readiness(served)[0] == 503, RECOVERED_WITHIN, "/readyz to fail")

        refused = [
            served.request(),
            served.call("POST", f"/api/v1/requests/{pending['id']}/approve", "carol", {}),
            served.call("POST", f"/api/v1/requests/{active_id}/credentials", "alice", {}),
            served.call("POST", f"/api/v1/requests/{active_id}/revoke", "carol",
                        {"reason": "done"}),
        ]  # fmt: skip
        for status, body in refused:
            assert (status, body) == (503, {"error": {"code": "unavailable",
                                                      "message": NOT_AUDITED}})  # fmt: skip
        # Nothing changed in the store: the same requests, in the same states.
        status, listed = served.call("GET", "/api/v1/requests", "carol")
        assert status == 200
        states = {r["id"]: r["state"] for r in listed["requests"]}
        assert states == {active_id: "active", pending["id"]: "pending"}

        filler.unlink()
        wait_until(lambda: readiness(served)[0] == 200, RECOVERED_WITHIN, "/readyz to recover")
        status, approved = served.call(
            "POST", f"/api/v1/requests/{pending['id']}/approve", "carol", {}
        )
        assert (status, approved["state"]) == (200, "active")
        status, _ = served.call("POST", f"/api/v1/requests/{active_id}/revoke", "carol",
                                {"reason": "done"})  # fmt: skip
        assert status == 200
        log = served.log_text()
    assert "Traceback" not in log

    result = verify_audit(audit_log)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lifecycle record" not in result.stdout  # every action's records were settled
    records = [json.loads(line) for line in audit_log.read_text().splitlines()]
    outcomes = [r for r in records if r["kind"] == "lifecycle.outcome"]
    assert outcomes
    assert all(r["committed"] for r in outcomes)
    revoked = [r for r in records if r["kind"] == "grant.revoked"]
    assert [r["grant_id"] for r in revoked] == [active_id]  # once: the refused one left no trace
