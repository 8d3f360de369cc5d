"""Single sign-on with two replicas on one PostgreSQL state store (issues 17 and 18): two real
`pgwarden serve` processes (tests/fixtures/replicas.py) with `identity.oidc` against the real
test provider. A device flow started on replica a is polled to its end on b (the flow's state is
in the store); the session alice gets works on both; carol, a lead only at the provider, sees
alice's request on a; once her refresh on b reads that she left `leads`, replica a follows
within seconds (the people write moves the change counter, and every replica's housekeeping
refreshes its effective policy). The policy has no `users:` at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.idp import Idp, client_secret_file, oidc_section, sso_policy
from tests.fixtures.pg_state import new_schema_name
from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.postgres import PostgresUnavailable
from tests.fixtures.replicas import Replica, Replicas, running_replicas, stop, until
from tests.fixtures.state_cluster import StateCluster
from tests.fixtures.state_cluster import state_cluster as start_state_cluster

pytestmark = pytest.mark.integration

FOLLOWS_WITHIN = 5.0  # seconds: housekeeping runs once a second on every replica


@pytest.fixture(scope="module")
def state_cluster() -> Iterator[StateCluster]:
    try:
        with start_state_cluster() as cluster:
            yield cluster
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


def with_sso(replicas: Replicas, deployment: PgwardenDeployment, idp: Idp, shared: Path) -> None:
    """Restart every replica with the SSO policy and `identity.oidc` in its config."""
    (shared / "policy.yaml").write_text(sso_policy(deployment))
    secret = client_secret_file(shared, idp.client_secret)
    section = oidc_section(idp.issuer, idp.client_id, secret)
    for replica in replicas:
        stop(replica)
        replica.config.write_text(replica.config.read_text() + section)
        replicas.start(replica.name)


def device_sign_in(start: Replica, finish: Replica, idp: Idp, user: str) -> dict[str, object]:
    status, started = start.call("POST", "/api/v1/auth/device", body={})
    assert status == 200, started
    idp.approve_device(started["verification_uri"], started["user_code"], user=user)
    status, signed = finish.call("POST", "/api/v1/auth/device/poll",
                                 body={"flow_id": started["flow_id"]})  # fmt: skip
    assert status == 200, signed
    return dict(signed)


def test_sign_in_sessions_and_group_changes_cross_replicas(
    deployment: PgwardenDeployment, state_cluster: StateCluster, private_idp: Idp,
    tmp_path: Path,
) -> None:  # fmt: skip
    with running_replicas(deployment, state_cluster, tmp_path, new_schema_name("sso_replicas"),
                          names=("a", "b"), people=()) as replicas:  # fmt: skip
        with_sso(replicas, deployment, private_idp, tmp_path)
        a, b = replicas["a"], replicas["b"]
        alice = device_sign_in(a, b, private_idp, "alice")  # started on a, finished on b
        assert (alice["user"], alice["groups"]) == ("alice", ["engineers"])
        a.running.tokens["alice"] = str(alice["session_token"])  # `call` sends it as bearer
        assert b.call("GET", "/api/v1/status", "alice")[0] == 200
        # Replica a knows alice once its housekeeping read the people (about a second).
        assert until(lambda: a.call("GET", "/api/v1/status", "alice")[0] == 200, FOLLOWS_WITHIN)
        body = {"target": "orders", "access_level": "read-only", "duration": "30m",
                "reason": "incident 7"}  # fmt: skip
        status, created = b.call("POST", "/api/v1/requests", "alice", body)
        assert status == 201, created
        path = f"/api/v1/requests/{created['id']}"

        carol = device_sign_in(a, a, private_idp, "carol")
        a.running.tokens["carol"] = str(carol["session_token"])
        assert a.call("GET", path, "carol")[0] == 200  # a lead, by the provider's word alone
        assert b.call("GET", path, "alice")[0] == 200

        private_idp.set_groups("carol", ["engineers"])
        status, refreshed = b.call("POST", "/api/v1/auth/refresh", body={
            "refresh_token": carol["refresh_token"]})  # fmt: skip
        assert (status, refreshed["groups"]) == (200, ["engineers"]), refreshed
        a.running.tokens["carol"] = str(refreshed["session_token"])
        assert until(lambda: a.call("GET", path, "carol")[0] == 404, FOLLOWS_WITHIN)
        assert a.call("POST", f"{path}/approve", "carol")[0] == 404
