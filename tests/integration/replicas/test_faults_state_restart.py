"""The state database restarted (`pg_ctl restart -m fast`) while clients work through every
replica.

What is right: the state store holds grants, not sessions. A session's relay runs between its
client and the upstream, which keeps running, and its deadline is timed in the replica's memory;
so no session ends, and no backend goes. Logins during the restart are answered from the
replica's last view of the grants (younger than `state.max_staleness`, 30 s by default). Once
the database is back, every replica resynchronises by itself: logins and API writes work, and a
revocation on one replica reaches a session on another.
"""

from __future__ import annotations

import pytest

from tests.fixtures.replica_load import under_load
from tests.fixtures.replicas import NAMES, Replicas, until
from tests.fixtures.state_cluster import StateCluster
from tests.integration.replicas.test_faults import ADMIN_SHUTDOWN, BOUND, fatal_of

SESSIONS_PER_REPLICA = 2


def writes_work(replicas: Replicas, via: str) -> bool:
    body = {"target": "orders", "access_level": "read-only", "duration": "5m", "reason": "probe"}
    status, _ = replicas[via].call("POST", "/api/v1/requests", "bob", body)
    return status == 201  # type: ignore[no-any-return]


def test_a_restart_of_the_state_database_under_load_ends_no_session(
    replicas: Replicas, state_up: StateCluster
) -> None:
    credentials = {name: replicas.grant(via=(name, name, name)) for name in NAMES}
    sessions = [
        (name, replicas.session(name, credentials[name]))
        for name in NAMES
        for _ in range(SESSIONS_PER_REPLICA)
    ]
    pids = {conn.info.backend_pid for _, conn in sessions}
    with under_load(replicas, sessions, list(credentials.items())) as load:
        assert until(lambda: load.queries > 0 and load.logins > 0, BOUND)
        state_up.restart()
        queries_at_restart = load.queries
        for name in NAMES:
            assert replicas.login_works(name, credentials[name], BOUND), name
            assert until(lambda name=name: writes_work(replicas, name), BOUND), name
        assert until(lambda: load.queries > queries_at_restart + len(sessions), BOUND)

    assert load.failures == [], "\n".join(load.failures)  # no query, no login failed
    assert all(replicas.backend_alive(pid) for pid in pids)

    status, revoked = replicas.revoke(credentials["c"].request_id, via="a")
    assert (status, revoked["state"]) == (200, "revoked"), revoked
    for name, session in sessions:
        if name != "c":
            session.execute("SELECT 1")  # the other grants' sessions go on
            continue
        error = fatal_of(session)
        assert error.sqlstate == ADMIN_SHUTDOWN
        assert "was revoked by carol: incident over" in str(error)
        assert replicas.wait_gone(session.info.backend_pid, BOUND) is not None


@pytest.fixture(autouse=True)
def _no_leftover_sessions(replicas: Replicas) -> None:
    replicas.close_sessions()
