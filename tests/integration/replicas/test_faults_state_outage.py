"""The state database stopped for longer than `state.max_staleness` (here 8 s).

What each replica must do while its store is away: live sessions go on, and end at their
grant's end as they would have (deadlines are kept in memory, on the monotonic clock); new logins
are answered from the last view of the grants for `max_staleness`, then refused, with a FATAL
saying so (57P03), since a revocation made meanwhile could not be seen; API writes answer 503.
When the database is back, every replica resynchronises by itself: logins and writes work
again, and a revocation on one replica ends a session on another.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proxy.grants.store_watch import LOGIN_REFUSED
from tests.fixtures.replicas import NAMES, Replicas, until
from tests.fixtures.state_cluster import StateCluster
from tests.integration.replicas.test_faults import ADMIN_SHUTDOWN, BOUND, fatal_of
from tests.integration.replicas.test_faults_state_restart import writes_work

MAX_STALENESS = "8s"  # read by the `replicas` fixture
STALENESS_SECONDS = 8.0
SHORT_GRANT = "15s"  # these grants end while the state database is down


def write_status(replicas: Replicas, via: str) -> tuple[int, str]:
    body = {"target": "orders", "access_level": "read-only", "duration": "5m", "reason": "probe"}
    status, answer = replicas[via].call("POST", "/api/v1/requests", "bob", body)
    return status, str(answer.get("error", {}).get("code", ""))


def seconds_until(iso: str) -> float:
    return (datetime.fromisoformat(iso.replace("Z", "+00:00")) - datetime.now(UTC)).total_seconds()


def test_a_state_database_down_past_max_staleness_refuses_logins_and_keeps_deadlines(
    replicas: Replicas, state_up: StateCluster
) -> None:
    long = {name: replicas.grant(via=(name, name, name)) for name in NAMES}
    short = {name: replicas.grant(via=(name, name, name), duration=SHORT_GRANT) for name in NAMES}
    long_sessions = {name: replicas.session(name, long[name]) for name in NAMES}
    short_sessions = {name: replicas.session(name, short[name]) for name in NAMES}
    ends_at = replicas.get(short["a"].request_id, via="a")["ends_at"]

    state_up.stop()
    for name in NAMES:  # within max_staleness: answered from the replica's last view
        assert replicas.login(name, long[name]) is None, name
    for name in NAMES:
        assert until(lambda name=name: write_status(replicas, name) == (503, "unavailable"), BOUND)
    for name in NAMES:  # still ready for the load balancer, since logins work; and says why
        status, ready = replicas[name].call("GET", "/readyz")
        assert status == 200, ready
        assert any("cannot be reached" in note for note in ready["notes"]), ready

    for name in NAMES:  # past it: refused, and said why
        assert until(
            lambda name=name: replicas.login(name, long[name]) is not None,
            STALENESS_SECONDS + BOUND,
        ), name
        refused = replicas.login(name, long[name])
        assert refused is not None
        assert (refused["S"], refused["C"], refused["M"]) == ("FATAL", "57P03", LOGIN_REFUSED)
        status, ready = replicas[name].call("GET", "/readyz")
        assert status == 503, ready

    for name in NAMES:  # the short grants end on time, the store still away
        error = fatal_of(short_sessions[name], max(0.0, seconds_until(ends_at)) + BOUND)
        assert error.sqlstate == ADMIN_SHUTDOWN
        assert "(read-only) expired at" in str(error), str(error)
        assert replicas.wait_gone(short_sessions[name].info.backend_pid, BOUND) is not None
    for name in NAMES:
        long_sessions[name].execute("SELECT count(*) FROM items")  # the others go on

    state_up.start()
    for name in NAMES:
        assert replicas.login_works(name, long[name], BOUND), name
        assert until(lambda name=name: writes_work(replicas, name), BOUND), name
        assert until(lambda name=name: replicas[name].call("GET", "/readyz")[0] == 200, BOUND)
    status, revoked = replicas.revoke(long["c"].request_id, via="a")
    assert (status, revoked["state"]) == (200, "revoked"), revoked
    error = fatal_of(long_sessions["c"])
    assert error.sqlstate == ADMIN_SHUTDOWN
    assert "was revoked by carol: incident over" in str(error)
    assert replicas.wait_gone(long_sessions["c"].info.backend_pid, BOUND) is not None
    for name in ("a", "b"):
        long_sessions[name].execute("SELECT 1")


@pytest.fixture(autouse=True)
def _no_leftover_sessions(replicas: Replicas) -> None:
    replicas.close_sessions()
