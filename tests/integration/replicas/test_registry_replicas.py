"""Replicas register themselves in the state store (issue 17: sessions across replicas).

Three `pgwarden serve` replicas (a, b, c) on one PostgreSQL schema: each has a row with its own
slot and the addresses it is reached at, kept fresh by its heartbeat; a fourth server with a
live replica's name is refused at start, saying why; a replica that is `kill -9`ed stops
beating, and once its heartbeat is older than the timeout (aged here in the database, as if
the time had passed) its sessions are no longer listed, a kill of one is answered 410, and its
name can be taken over by a new start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from proxy.cluster.replica_sql import REPLICA_TIMEOUT
from tests.fixtures.postgres import free_loopback_port
from tests.fixtures.replicas import Replica, Replicas, until, write_config
from tests.integration.replicas.registry_view import listed, registry_rows

LISTED_WITHIN = 15.0  # seconds: a replica writes its session rows within a heartbeat (1 s); a
# loaded machine (the suite runs on both cores) can delay a beat by seconds


def test_each_replica_registers_with_a_slot_of_its_own_and_its_addresses(
    replicas: Replicas,
) -> None:
    rows = registry_rows(
        replicas,
        "SELECT id, slot, proxy_address, api_address, stopped_at IS NULL, "
        "heartbeat_at > now() - make_interval(secs => %s) FROM replicas ORDER BY id",
        REPLICA_TIMEOUT,
    )
    assert [row[0] for row in rows] == ["a", "b", "c"]
    assert sorted(row[1] for row in rows) == [0, 1, 2]  # the lowest free slots, one each
    for name, _slot, proxy_address, api_address, running, fresh in rows:
        replica = replicas[name]
        assert proxy_address == f"127.0.0.1:{replica.proxy_port}"  # state.advertise
        assert api_address == f"127.0.0.1:{replica.api_port}"
        assert running
        assert fresh


def test_a_server_with_the_name_of_a_live_replica_is_refused_at_start(
    replicas: Replicas, tmp_path: Path
) -> None:
    shared = replicas["a"].directory.parent
    twin = Replica("a", tmp_path / "twin", free_loopback_port(), free_loopback_port(), {})
    write_config(twin, shared / "policy.yaml", shared / "state.dsn", replicas.schema, None)
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(twin.config)],
        capture_output=True, text=True, timeout=60, env=os.environ.copy(), check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert 'replica "a" is already running' in done.stderr, done.stderr
    assert "give each server its own state.replica" in done.stderr
    (slot,) = registry_rows(replicas, "SELECT slot FROM replicas WHERE id = 'a'")
    assert slot[0] is not None  # the refused server took nothing from the live one


def test_a_killed_replica_expires_by_heartbeat_and_its_name_is_taken_over(
    replicas: Replicas,
) -> None:
    credential = replicas.grant()
    on_a = replicas.session("a", credential)
    assert on_a.execute("SELECT 1").fetchone() == (1,)
    assert until(lambda: len(listed(replicas, "b", credential.request_id)) == 1, LISTED_WITHIN)
    (session,) = listed(replicas, "b", credential.request_id)
    ((first_start,),) = registry_rows(replicas, "SELECT started_at FROM replicas WHERE id = 'a'")

    replicas.kill("a")
    # Its rows stay until its heartbeat is older than the timeout: make it so, as time would.
    registry_rows(
        replicas,
        "UPDATE replicas SET heartbeat_at = heartbeat_at - make_interval(secs => %s) "
        "WHERE id = 'a' RETURNING id",
        REPLICA_TIMEOUT + 1,
    )
    assert listed(replicas, "b", credential.request_id) == []
    status, body = replicas["b"].call("DELETE", f"/api/v1/sessions/{session['id']}", "carol")
    assert (status, body["error"]["code"]) == (410, "replica_gone"), body
    assert "replica a is gone; its sessions ended with it" in body["error"]["message"]

    replicas.start("a")  # the same name: the dead row is taken over
    ((started, running),) = registry_rows(
        replicas, "SELECT started_at, stopped_at IS NULL FROM replicas WHERE id = 'a'"
    )
    assert started > first_start
    assert running
    assert registry_rows(replicas, "SELECT 1 FROM replica_sessions WHERE replica_id = 'a'") == []
    status, body = replicas["b"].call("GET", "/api/v1/sessions", "carol")
    assert status == 200
    assert "incomplete" not in body
