"""The example configs under deploy/ are valid: what an admin copies must start."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from proxy.config import StateBackend, load_config
from proxy.policy.policy_file import load_policy

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROOT = DEPLOY.parent


@pytest.mark.parametrize("name", ["pgwarden.yaml", "pgwarden-a.yaml", "pgwarden-b.yaml"])
def test_every_compose_server_config_parses(name: str) -> None:
    load_config(DEPLOY / "compose" / name)


def test_the_two_replicas_share_a_store_and_differ_in_name_and_address() -> None:
    a, b = (load_config(DEPLOY / "compose" / f"pgwarden-{r}.yaml").state for r in "ab")
    assert a.backend is b.backend is StateBackend.POSTGRES
    assert (a.dsn, a.schema) == (b.dsn, b.schema)
    assert a.replica != b.replica
    assert a.advertise != b.advertise


def test_the_compose_file_mounts_each_replica_s_own_config() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for replica in ("a", "b"):
        mounts = services[f"pgwarden-{replica}"]["volumes"]
        assert f"./deploy/compose/pgwarden-{replica}.yaml:/etc/pgwarden/pgwarden.yaml:ro" in mounts
    haproxy = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert "server pgwarden-a pgwarden-a:6432 check port 8080" in haproxy
    assert "option httpchk GET /readyz" in haproxy


def test_the_compose_policy_parses() -> None:
    assert load_policy(DEPLOY / "compose" / "policy.yaml").targets
