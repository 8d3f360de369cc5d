"""The state store fails under a live `pgwarden serve` process: its file deleted, its disk full.

Deleted (with its -wal and -shm): within about a second, with no traffic, /readyz fails naming
the path and one ERROR says so; approvals and credentials get a 503 naming the store; logins are
refused with FATAL 57P03 in every process (`proxy.workers` 1 and 2); a live session goes on, and
`pgwarden kill` ends it — the emergency path a refused revocation points at; a restart refuses
to make a new, empty store beside the audit log (exit 2, one line).

Disk full (a 2 MiB tmpfs under the state file; we run as root — skipped, saying why, where
mounting is not permitted): writes get a 503 `cannot be written (disk full)`, no traceback, a
metric counts them, /readyz fails; reads and logins go on; once space is back the store recovers
by itself within a couple of seconds, and the refused revocation can be done.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from proxy.grants.store_watch import LOGIN_REFUSED
from tests.fixtures.clients import wait_until
from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.served import fill, pgwarden, readiness, refused_login, serving

pytestmark = pytest.mark.integration

NOTICED_WITHIN = 3.0  # seconds: housekeeping looks once a second


def delete_state(state: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        state.with_name(state.name + suffix).unlink(missing_ok=True)


# --- the state file deleted under a live server ---------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_state_file_deleted_under_a_live_server_is_loud_and_refuses_new_access(
    deployment: PgwardenDeployment, tmp_path: Path, workers: int
) -> None:
    config = deployment.write_files(tmp_path, workers=workers)
    state = tmp_path / "state.db"
    with serving(config, state) as served:
        for user in ("alice", "carol"):
            served.token(user)
        request_id, dsn = served.active_grant()
        with psycopg.connect(dsn, autocommit=True) as live:
            session_id = served.session_of(request_id)
            assert readiness(served)[0] == 200
            deleted_at = time.monotonic()
            delete_state(state)

            # Noticed with no traffic at all (housekeeping): one ERROR line naming the path,
            # and /readyz says the same.
            explanation = (
                f"the state store {state} was deleted while pgwarden ran; approvals, credentials "
                "and logins are refused until pgwarden is restarted (put the file back first)"
            )
            logged = f"ERROR proxy.grants.store_watch: {explanation}"
            wait_until(lambda: logged in served.log_text(), NOTICED_WITHIN, "the ERROR line")
            noticed = time.monotonic() - deleted_at
            status, ready = readiness(served)
            assert status == 503
            assert explanation in ready["problems"]

            # Approvals and credentials: a 503 naming the store; nothing made anew.
            status, refused = served.request()
            assert (status, refused["error"]["code"]) == (503, "unavailable")
            assert refused["error"]["message"] == explanation
            assert not state.exists()

            # Logins: refused in every process, before any password exchange.
            for _ in range(4 * workers):
                error = refused_login(served)
                assert (error["S"], error["C"], error["M"]) == ("FATAL", "57P03", LOGIN_REFUSED)

            # A live session goes on until its grant ends, or until someone ends it: the
            # refused revocation says how, and `pgwarden kill` does it.
            assert live.execute("SELECT 1").fetchone() == (1,)
            revoke = served.cli("carol", "revoke", request_id, "--reason", "incident over")
            assert revoke.returncode == 1
            assert revoke.stderr.strip() == (
                f"pgwarden: {explanation}; to end its sessions now, run: pgwarden kill {session_id}"
            )
            kill = served.cli("carol", "kill", session_id, "--reason", "state store lost")
            assert kill.returncode == 0, kill.stderr
            with pytest.raises(psycopg.OperationalError, match="ended by an administrator"):
                live.execute("SELECT 1")

        wait_until(  # published by housekeeping, each process once a second
            lambda: served.metric("pgwarden_state_store_errors_total", kind="deleted") == workers,
            NOTICED_WITHIN, "the error metric",
        )  # fmt: skip
        assert served.metric("pgwarden_state_store_healthy") == 0
        served.process.terminate()
        assert served.process.wait(30) == 0
        assert "Traceback" not in served.log_text()
        print(f"workers={workers}: the deleted state file was noticed after {noticed:.2f} s")

    # A restart would silently start with an empty store: refused, one line, nothing created.
    started = pgwarden("serve", "--config", str(config))
    assert started.returncode == 2
    assert "Traceback" not in started.stderr
    (line,) = started.stderr.splitlines()
    assert line.startswith(f"pgwarden: paths.state: {state} does not exist, but the audit log")
    assert line.endswith(f"pgwarden serve --config {config} --new-state")
    assert not state.exists()


# --- the state store's disk full ------------------------------------------------------------


def test_disk_full_under_the_state_store_is_a_clear_503_and_recovers_by_itself(
    deployment: PgwardenDeployment, tmp_path: Path, tiny_disk: Path
) -> None:
    config = deployment.write_files(tmp_path)
    state = tiny_disk / "state.db"
    config.write_text(config.read_text().replace("state: state.db", f"state: {state}"))
    with serving(config, state) as served:
        for user in ("alice", "carol"):
            served.token(user)
        request_id, dsn = served.active_grant()
        with psycopg.connect(dsn, autocommit=True) as live:
            session_id = served.session_of(request_id)
            filler = fill(tiny_disk)
            full = (
                f"the state store {state} cannot be written (disk full); approvals and "
                "credentials are refused until it can"
            )

            status, refused = served.request()
            assert (status, refused) == (503, {"error": {"code": "unavailable", "message": full}})
            status, refused = served.call(
                "POST", f"/api/v1/requests/{request_id}/credentials", "alice", {}
            )
            assert (status, refused["error"]["message"]) == (503, full)
            status, ready = readiness(served)
            assert (status, ready["problems"]) == (503, [full])
            wait_until(
                lambda: served.metric("pgwarden_state_store_errors_total", kind="disk_full") >= 2,
                NOTICED_WITHIN, "the error metric",
            )  # fmt: skip

            # Reads go on: the live session, and a new login with the grant's credential.
            assert live.execute("SELECT 1").fetchone() == (1,)
            with psycopg.connect(dsn) as another:
                assert another.execute("SELECT 2").fetchone() == (2,)

            # Revocation cannot be stored; the answer says how to end the session now.
            revoke = served.cli("carol", "revoke", request_id)
            assert revoke.returncode == 1
            assert revoke.stderr.strip() == (
                f"pgwarden: {full}; to end its sessions now, run: pgwarden kill {session_id}"
            )
            assert served.cli("carol", "kill", session_id).returncode == 0
            with pytest.raises(psycopg.OperationalError, match="ended by an administrator"):
                live.execute("SELECT 1")

            # Space back: recovered by itself (housekeeping retries a write each second).
            filler.unlink()
            wait_until(lambda: readiness(served)[0] == 200, NOTICED_WITHIN, "/readyz to recover")
            assert served.cli("carol", "revoke", request_id).returncode == 0
            assert served.request()[0] == 201

        log = served.log_text()
        assert f"ERROR proxy.grants.store_watch: {full} (database or disk is full)" in log
        assert f"WARNING proxy.grants.store_watch: the state store {state} can be written" in log
        assert "Traceback" not in log
        assert "OperationalError" not in log
