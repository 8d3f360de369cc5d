"""A replica restarted after kill -9 ends the backends its earlier life left, and never those of
the other replicas, although they log in as the same roles (upstream/orphans.py, SweepScope)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.fixtures.pg_state import new_schema_name
from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.replicas import Replicas, running_replicas, until
from tests.fixtures.state_cluster import StateCluster

BOUND = 15.0  # seconds for anything to happen (a restart, a heartbeat, a termination)


@pytest.fixture(scope="module")
def replicas(
    deployment: PgwardenDeployment,
    state_cluster: StateCluster,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Replicas]:
    """Three replicas whose targets have a control role: each sweeps at start."""
    with running_replicas(
        deployment, state_cluster, tmp_path_factory.mktemp("replicas-orphans"),
        new_schema_name("orphans"), control=True,
    ) as started:  # fmt: skip
        yield started


def sleeping_backend(conn: psycopg.Connection[Any]) -> tuple[int, threading.Thread]:
    """The session's backend pid, running a long query that does not look at its client (so a
    dead pgwarden cannot end it: only the sweep can)."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert pid is not None
    conn.execute("SET client_connection_check_interval = 0")

    def sleep() -> None:
        with contextlib.suppress(psycopg.Error):  # ended: what the test is about
            conn.execute("SELECT pg_sleep(120)")

    thread = threading.Thread(target=sleep, daemon=True)
    thread.start()
    return int(pid[0]), thread


def listed_on(replicas: Replicas, via: str, holder: str, count: int) -> bool:
    status, listed = replicas[via].call("GET", "/api/v1/sessions", "carol")
    assert status == 200, listed
    return sum(1 for s in listed["sessions"] if s.get("replica") == holder) >= count


def test_a_restarted_replica_ends_its_own_leftovers_and_spares_the_others(
    replicas: Replicas,
) -> None:
    mine = replicas.session("b", replicas.grant(via=("b", "b", "b")))
    theirs = replicas.session("a", replicas.grant(via=("a", "a", "a")))
    mine_pid, _ = sleeping_backend(mine)
    their_pid, _ = sleeping_backend(theirs)
    # Both recorded in the shared store (rows are written within a heartbeat).
    assert until(lambda: listed_on(replicas, "c", "b", 1), BOUND)
    assert until(lambda: listed_on(replicas, "c", "a", 1), BOUND)

    replicas.kill("b")
    assert replicas.backend_alive(mine_pid)  # a dead pgwarden could not end it
    replicas.start("b")

    assert replicas.wait_gone(mine_pid, BOUND) is not None, "b's leftover still runs"
    assert replicas.backend_alive(their_pid), "b's restart ended a's session"
    assert "a previous run of pgwarden left it behind" in replicas["b"].log_text()
