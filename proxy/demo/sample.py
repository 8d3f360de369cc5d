"""The demo's world: a sample database `shop`, its upstream roles, and pgwarden's config files.

Set up with the `psql` binary (the demo needs it anyway, to show a real client), so the demo adds
no Python dependency. Roles follow what the README asks of a real target: a read-only role with
SELECT only and PUBLIC's default large-object and temporary-table privileges revoked, a
read-write role, and a control role with `pg_signal_backend`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from proxy.demo.cluster import LocalCluster

DATABASE = "shop"
RO_ROLE, RW_ROLE, CONTROL_ROLE = "shop_ro", "shop_rw", "pgwarden_control"

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, city text NOT NULL);
CREATE TABLE orders (
    id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customers,
    placed_at timestamptz NOT NULL, total numeric(10, 2) NOT NULL
);
INSERT INTO customers VALUES
    (1, 'Ada Lovelace', 'London'), (2, 'Grace Hopper', 'New York'),
    (3, 'Edsger Dijkstra', 'Austin');
INSERT INTO orders
    SELECT n, 1 + n % 3, now() - n * interval '1 hour', (n * 7.25)::numeric(10, 2)
    FROM generate_series(1, 1200) AS n;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION lo_create(oid), lo_creat(integer), lo_from_bytea(oid, bytea) FROM PUBLIC;
REVOKE TEMPORARY ON DATABASE shop FROM PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO shop_ro;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO shop_rw;
"""

POLICY = """\
# The demo's policy: alice (an engineer) asks, carol (a lead) approves. With single sign-on
# the groups come from the identity provider too (the same ones here); these users stay for the
# demo's API tokens.
version: 1
admin_groups: [leads]
pending_timeout: 1h
users:
  alice: {{groups: [engineers]}}
  carol: {{groups: [leads]}}
targets:
  shop:
    description: the demo shop database
    upstream: {{host: 127.0.0.1, port: {port}, database: shop, tls: disable}}
    max_duration: 1h
    control: {{role: pgwarden_control, password_env: DEMO_CONTROL_PASSWORD}}
    approval:
      approvers: {{groups: [leads]}}
      required_approvals: 1
      require_reason: true
    access_levels:
      read-only:  {{role: shop_ro, password_env: DEMO_RO_PASSWORD}}
      read-write: {{role: shop_rw, password_env: DEMO_RW_PASSWORD, max_duration: 15m}}
"""

CONFIG = """\
proxy: {{listen: "127.0.0.1:{proxy_port}"}}
api: {{listen: "127.0.0.1:{api_port}"}}
paths: {{policy: policy.yaml, state: state.db, audit_log: audit/audit.jsonl}}
audit: {{hmac_key_file: audit.key}}
sessions: {{shutdown_grace: 2s}}
"""


@dataclass
class DemoSecrets:
    """The role passwords (handed to pgwarden through its environment) and the audit key (a file
    beside the config, so `pgwarden audit verify --config` finds it in a second terminal)."""

    ro: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    rw: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    control: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    audit_key: str = field(default_factory=lambda: secrets.token_hex(32))

    def environment(self) -> dict[str, str]:
        return {
            "DEMO_RO_PASSWORD": self.ro, "DEMO_RW_PASSWORD": self.rw,
            "DEMO_CONTROL_PASSWORD": self.control,
        }  # fmt: skip


class PsqlMissing(RuntimeError):
    """The demo needs the psql client."""


def psql_binary() -> str:
    """The psql client's path (installed with PostgreSQL's client package)."""
    found = shutil.which("psql")
    if found is None:
        raise PsqlMissing("psql was not found: install it (apt-get install -y postgresql-client)")
    return found


def run_sql(cluster: LocalCluster, database: str, sql: str) -> None:
    """Run SQL as the cluster's superuser with psql (stops at the first error)."""
    env = {**os.environ, "PGPASSWORD": cluster.superuser_password}
    command = [psql_binary(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", cluster.host]
    command += ["-p", str(cluster.port), "-U", cluster.superuser, "-d", database, "-c", sql]
    # Our own SQL, run by the psql found on PATH.
    subprocess.run(command, env=env, check=True, capture_output=True, text=True, timeout=60)  # noqa: S603


def create_shop(cluster: LocalCluster, demo: DemoSecrets) -> None:
    """The `shop` database with its data and the three roles."""
    roles = (
        f"CREATE ROLE {RO_ROLE} LOGIN PASSWORD '{demo.ro}'; "
        f"CREATE ROLE {RW_ROLE} LOGIN PASSWORD '{demo.rw}'; "
        f"CREATE ROLE {CONTROL_ROLE} LOGIN PASSWORD '{demo.control}'; "
        f"GRANT pg_signal_backend TO {CONTROL_ROLE};"
    )  # token_urlsafe passwords hold no quotes
    run_sql(cluster, "postgres", roles)
    run_sql(cluster, "postgres", f"CREATE DATABASE {DATABASE}")
    run_sql(cluster, DATABASE, SCHEMA)


def write_files(
    directory: Path, cluster: LocalCluster, demo: DemoSecrets, ports: tuple[int, int],
    identity: str = "",
) -> Path:  # fmt: skip
    """policy.yaml, pgwarden.yaml (with `identity`, the single sign-on section, if any) and the
    audit key (mode 600) for the demo; returns the config. `ports`: the proxy's, the API's."""
    (directory / "audit").mkdir(parents=True, exist_ok=True)
    key = directory / "audit.key"
    key.touch(mode=0o600)
    key.write_text(demo.audit_key)
    (directory / "policy.yaml").write_text(POLICY.format(port=cluster.port))
    config = directory / "pgwarden.yaml"
    proxy_port, api_port = ports
    config.write_text(CONFIG.format(proxy_port=proxy_port, api_port=api_port) + identity)
    return config
