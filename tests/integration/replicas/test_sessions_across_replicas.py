"""The API of any replica lists and ends the sessions of all of them (issue 17).

Sessions through replicas a and c are listed by b's API, each naming its replica; carol ends a
session on a through b's API: b writes a kill order, a carries it out through the session's
one exit, so the psycopg client on a gets the FATAL with carol's reason, the backend leaves
pg_stat_activity, and a's audit chain records the kill as a local one; who may end a session
is checked on b as for a local one.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from tests.fixtures.replicas import Replicas, until
from tests.integration.replicas.registry_view import listed

LISTED_WITHIN = 15.0  # seconds: a replica writes its session rows within a heartbeat (1 s); a
# loaded machine (the suite runs on both cores) can delay a beat by seconds
ENDED_WITHIN = 10.0  # seconds: a carries the order out at its next heartbeat (1 s)
GONE_WITHIN = 5.0  # seconds for the killed session's backend to leave pg_stat_activity


def test_sessions_on_other_replicas_are_listed_with_their_replica(replicas: Replicas) -> None:
    credential = replicas.grant()
    on_a, on_c = replicas.session("a", credential), replicas.session("c", credential)
    pids = {"a": on_a.info.backend_pid, "c": on_c.info.backend_pid}
    assert until(lambda: len(listed(replicas, "b", credential.request_id)) == 2, LISTED_WITHIN)
    for via in ("a", "b", "c"):
        shown = {s["replica"]: s for s in listed(replicas, via, credential.request_id)}
        assert set(shown) == {"a", "c"}, via
        for session in shown.values():
            assert (session["user"], session["target"]) == ("alice", "orders")
    own = listed(replicas, "b", credential.request_id, user="alice")
    assert len(own) == 2  # the requester sees her own sessions everywhere
    assert listed(replicas, "b", credential.request_id, user="bob") == []
    on_c.close()
    assert until(lambda: len(listed(replicas, "b", credential.request_id)) == 1, LISTED_WITHIN)
    assert replicas.backend_alive(pids["a"])


SHORT_SESSIONS = 8  # sessions that begin and end between two of c's heartbeats, most of them


def test_rows_of_sessions_no_heartbeat_saw_alive_are_deleted_when_they_end(
    replicas: Replicas,
) -> None:
    """A session's row is written ahead of its first query; one that ends before a heartbeat
    saw it alive must not leave its row behind (it did: listed on every replica until c
    stopped)."""
    credential = replicas.grant()
    for _ in range(SHORT_SESSIONS):
        with replicas["c"].connect(credential) as conn:
            conn.execute("SELECT 1")
    assert until(lambda: listed(replicas, "b", credential.request_id) == [], LISTED_WITHIN)


def test_a_kill_on_one_replica_ends_the_session_on_another(replicas: Replicas) -> None:
    credential = replicas.grant()
    on_a = replicas.session("a", credential)
    pid = on_a.info.backend_pid
    assert until(lambda: len(listed(replicas, "b", credential.request_id)) == 1, LISTED_WITHIN)
    (session,) = listed(replicas, "b", credential.request_id)

    path = f"/api/v1/sessions/{session['id']}"
    status, body = replicas["b"].call("DELETE", path, "carol", {"reason": "runaway query"})
    # 200 once a has carried the order out (within its next heartbeat), 202 if it has not yet.
    assert (status, body["ended"]) in ((200, True), (202, False)), body
    assert (body["session"]["id"], body["session"]["replica"]) == (session["id"], "a")
    assert_ends(on_a, "ended by an administrator: runaway query")
    assert replicas.wait_gone(pid, GONE_WITHIN) is not None
    audit = replicas["a"].audit_log.read_text()
    assert "killed by carol on replica b: runaway query" in audit
    assert until(lambda: listed(replicas, "b", credential.request_id) == [], LISTED_WITHIN)
    status, body = replicas["b"].call("DELETE", path, "carol")
    assert status == 404, body  # gone from a's rows once it ended


def test_only_those_who_may_end_a_session_here_may_end_it_on_another_replica(
    replicas: Replicas,
) -> None:
    credential = replicas.grant()
    on_a = replicas.session("a", credential)
    assert until(lambda: len(listed(replicas, "b", credential.request_id)) == 1, LISTED_WITHIN)
    (session,) = listed(replicas, "b", credential.request_id)
    path = f"/api/v1/sessions/{session['id']}"
    assert replicas["b"].call("DELETE", path, "bob")[0] == 404  # may not even see it
    status, body = replicas["b"].call("DELETE", path, "alice")
    assert (status, body["error"]["code"]) == (403, "not_permitted"), body
    assert on_a.execute("SELECT 1").fetchone() == (1,)


def assert_ends(session: psycopg.Connection[Any], told: str) -> None:
    """The session's next query fails with what it was told, within ENDED_WITHIN (bounded)."""
    deadline = time.monotonic() + ENDED_WITHIN
    with pytest.raises(psycopg.OperationalError, match=told):  # noqa: PT012 - polls until it fails
        while time.monotonic() < deadline:
            session.execute("SELECT 1")
            time.sleep(0.05)
        pytest.fail(f"the session was not ended within {ENDED_WITHIN} s")
