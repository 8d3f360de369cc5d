"""A fresh PostgreSQL for each run, and pgwarden in front of it for the runs through pgwarden.

`fresh_postgres()` is the bench's throwaway server (`postgres_server()` from the test harness:
`initdb` on a free loopback port, removed afterwards), prepared as the suites expect:

- a login role `postgres`, SUPERUSER, with a random password. The suites create tables, types,
  schemas, extensions (hstore, citext, isn), large objects, prepared transactions, replication
  slots, and look at other sessions; their own CI runs them as a superuser, and pg8000's logs in
  as `postgres` whatever its environment says. pgwarden maps the compat access level to this
  role, which `pgwarden policy check --connect` warns about, rightly: it is for this test only;
- the `hstore` extension in database `postgres`, as psycopg2's CI installs it before its tests;
- `wal_level = logical` and `max_prepared_transactions = 10`, as psycopg2's CI sets them (its
  replication and two-phase-commit tests skip or fail without), applied with ALTER SYSTEM and a
  restart (`pg_ctl restart`) of the throwaway cluster. A server named by `PGWARDEN_TEST_DSN` is
  used as it is configured.

`running_pgwarden()` starts `python -m proxy serve` (bench/stack.py's way: its own process group,
its log in a file, stopped by group) with pgwarden's *default* limits and audit settings, a policy
with one target (`postgres`) whose one access level maps to that role, and an active grant with a
credential for the suite's pgwarden user, issued through `GrantService` as the API will.

Each run gets its own server (and pgwarden), so no run sees what another left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from bench.stack import (
    HOST,
    BenchError,
    child_process,
    issue_credential,
    os_user_ids,
    wait_until_listening,
)
from compat.suites import ACCESS_LEVEL, DATABASE, ROLE, TARGET, Endpoint
from tests.fixtures.postgres import PostgresServer, free_loopback_port, postgres_server

# What psycopg2's CI configures; both need a restart.
SERVER_SETTINGS = {"wal_level": "logical", "max_prepared_transactions": "10"}
RESTART_TIMEOUT = 60  # seconds for `pg_ctl restart`
ROLE_PASSWORD_ENV = "PGWARDEN_COMPAT_ROLE_PASSWORD"  # noqa: S105 - the variable's name
AUDIT_KEY_ENV = "PGWARDEN_COMPAT_AUDIT_KEY"

# Default limits, default audit (every query recorded), no TLS (the suites use sslmode=prefer,
# and the database has none either). Only the shutdown grace is short: nothing is left at the end.
PGWARDEN_CONFIG = """\
proxy:
  listen: {host}:{port}
api:
  listen: {host}:0
paths:
  policy: policy.yaml
  state: state.db
  audit_log: audit.jsonl
audit:
  hmac_key_env: {audit_key_env}
sessions:
  shutdown_grace: 2s
"""

POLICY = """\
version: 1
admin_groups: [dba]
users:
  alice: {{groups: [developers]}}
  postgres: {{groups: [developers]}}  # pg8000's tests log in with this name, whatever is set
  carol: {{groups: [dba]}}
targets:
  {target}:
    description: the database the client test suites run in (make compat)
    upstream: {{host: {host}, port: {port}, database: {database}, tls: disable}}
    max_duration: 4h
    approval:
      approvers: {{groups: [dba]}}
      required_approvals: 1
    access_levels:
      # A superuser, as the suites' own CI uses: for this test only.
      {level}: {{role: {role}, password_env: {password_env}}}
"""


@dataclass(frozen=True)
class Upstream:
    """The run's PostgreSQL and the password of the role the suites log in as."""

    postgres: PostgresServer
    password: str
    version: str  # server_version, as the server says

    def endpoint(self) -> Endpoint:
        return Endpoint(
            "direct", self.postgres.host, self.postgres.port, ROLE, self.password, DATABASE
        )


@contextlib.contextmanager
def fresh_postgres() -> Iterator[Upstream]:
    """A throwaway PostgreSQL with the suites' role and extension; removed on exit."""
    with postgres_server() as pg:
        password = secrets.token_urlsafe(18)
        with pg.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,))
            verb = "ALTER" if exists.fetchone() else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(password)
                )
            )
        configure_and_restart(pg)
        with psycopg.connect(pg.dsn(dbname=DATABASE), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS hstore")
            row = conn.execute("SHOW server_version").fetchone()
        yield Upstream(pg, password, str(row[0]) if row else "unknown")


def configure_and_restart(pg: PostgresServer) -> None:
    """SERVER_SETTINGS on the harness's throwaway cluster (its data directory lies beside its
    log, proxy/demo/cluster.py); nothing on a server that is not ours to restart."""
    datadir = None if pg.log_path is None else pg.log_path.parent / "data"
    if pg.bindir is None or datadir is None or not (datadir / "postgresql.conf").is_file():
        return
    with pg.connect() as conn:
        for name, value in SERVER_SETTINGS.items():
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
    ids = os_user_ids("postgres")  # Postgres runs as that OS user when we are root
    user, group = ids if ids is not None else (None, None)
    argv = [str(pg.bindir / "pg_ctl"), "-D", str(datadir), "-l", str(pg.log_path), "-w",
            "-t", str(RESTART_TIMEOUT), "-m", "fast", "restart"]  # fmt: skip
    result = subprocess.run(  # noqa: S603 - pg_ctl from the harness's bindir, fixed arguments
        argv, capture_output=True, text=True, timeout=RESTART_TIMEOUT + 10, check=False,
        user=user, group=group, extra_groups=None if ids is None else [],
    )  # fmt: skip
    if result.returncode != 0:
        raise BenchError(f"pg_ctl restart failed ({result.returncode}): {result.stderr[-2000:]}")


@contextlib.contextmanager
def running_pgwarden(upstream: Upstream, directory: Path, user: str) -> Iterator[Endpoint]:
    """pgwarden with default limits in front of `upstream`, and `user`'s credential for it."""
    directory.mkdir(mode=0o700, parents=True)
    port = free_loopback_port()
    policy = directory / "policy.yaml"
    policy.write_text(
        POLICY.format(
            target=TARGET, host=upstream.postgres.host, port=upstream.postgres.port,
            database=DATABASE, level=ACCESS_LEVEL, role=ROLE, password_env=ROLE_PASSWORD_ENV,
        )
    )  # fmt: skip
    config = directory / "pgwarden.yaml"
    config.write_text(PGWARDEN_CONFIG.format(host=HOST, port=port, audit_key_env=AUDIT_KEY_ENV))
    os.environ[ROLE_PASSWORD_ENV] = upstream.password  # read by the child at start
    os.environ.setdefault(AUDIT_KEY_ENV, secrets.token_hex(32))
    log = directory / "pgwarden.log"
    argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
    with child_process(argv, log) as proc:
        wait_until_listening(port, proc, log)
        credential = issue_credential(
            directory / "state.db", policy, user=user, target=TARGET, level=ACCESS_LEVEL,
            reason="make compat",
        )  # fmt: skip
        yield Endpoint("pgwarden", HOST, port, credential.username, credential.password, TARGET)
