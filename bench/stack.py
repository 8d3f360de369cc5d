# ruff: noqa: S603 - the bench runs local tools with fixed argv lists, never a shell
"""The three paths under test: direct Postgres, pgbouncer (session mode) and pgwarden.

`bench_stack()` brings everything up and tears it all down on exit, also on Ctrl-C or failure:

1. a throwaway Postgres from the test harness (`postgres_server()`), the `orders` database and its
   roles from `PgwardenDeployment`, and pgbench's tables (`pgbench -i`, run as the superuser since
   only the owner may create them, then granted to the read-write role);
2. pgwarden as a separate process (`python -m proxy serve`) on a free loopback port, its log in a
   file, with an active read-write grant and a credential issued through `GrantService` on its
   SQLite state file, as the HTTP API will;
3. pgbouncer in session mode on a free loopback port, authenticating the read-write role with its
   SCRAM verifier copied from `pg_authid` (so, like pgwarden, it never needs the clear password
   to check a client, and logs in upstream with the client's SCRAM keys).

Every path logs in as the same read-write role with SCRAM, so they differ only by the proxy.
Child processes run in their own process group and are stopped by group: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from proxy.clock import SYSTEM_CLOCK
from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import IssuedCredential
from proxy.grants.store import SqliteStore
from proxy.policy.models import AccessLevelName, TargetName, UserName
from proxy.policy.reload import PolicyHolder
from tests.fixtures.pgwarden import RW_ROLE, TARGET_DB, PgwardenDeployment
from tests.fixtures.postgres import PostgresServer, free_loopback_port, postgres_server

HOST = "127.0.0.1"  # loopback only, for every path
START_TIMEOUT = 30.0  # seconds for a proxy to accept connections
STOP_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL
INIT_TIMEOUT = 600.0  # seconds for `pgbench -i`
GRANT_DURATION = timedelta(hours=2)  # longer than any full run
PGBOUNCER_OS_USER = "postgres"  # pgbouncer refuses to run as root

# Every bench client connects from 127.0.0.1; per-source caps would measure the caps, not the relay.
PGWARDEN_CONFIG = """\
proxy:
  listen: {host}:{port}
  workers: {workers}
api:
  listen: {host}:0
paths:
  policy: policy.yaml
  state: state.db
  audit_log: audit.jsonl
audit:
  hmac_key_env: PGWARDEN_TEST_AUDIT_KEY
{audit_extra}
{sections}
limits:
  max_sessions_per_source: 500
  max_preauth_connections: 500
  max_preauth_per_source: 500
sessions:
  shutdown_grace: 2s
"""


@dataclass(frozen=True)
class Variant:
    """A pgwarden configuration under test: lines added to its audit section, whole sections
    added to its config, and the cases it runs (empty: all)."""

    audit_extra: str = ""
    sections: str = ""
    cases: tuple[str, ...] = ()
    workers: int = 1


# "pgwarden" runs with the default settings (every query recorded, no upstream pool);
# "pgwarden-noaudit" records sessions only; "pgwarden-pool" keeps upstream backends between
# sessions (`upstream_pool`, off by default), which only changes connection setup, so it runs
# only the new-connection-per-transaction case. The "-w2" paths run two worker processes
# (`proxy.workers: 2`) on the cases where one event loop is the limit.
AUDIT_OFF_PATH = "pgwarden-noaudit"
POOL_PATH = "pgwarden-pool"
SCALING_CASES = ("-S -c8", "-S -c32", "-S -M prepared -c8")
VARIANTS = {
    "pgwarden": Variant(),
    AUDIT_OFF_PATH: Variant(audit_extra="  record_queries: false"),
    POOL_PATH: Variant(
        sections="upstream_pool:\n  enabled: true\n  max_idle: 16", cases=("-S -C -c8",)
    ),
    "pgwarden-w2": Variant(workers=2, cases=SCALING_CASES),
    "pgwarden-noaudit-w2": Variant(
        audit_extra="  record_queries: false", workers=2, cases=SCALING_CASES
    ),
}

PGBOUNCER_INI = """\
[databases]
{dbname} = host={pg_host} port={pg_port} dbname={dbname}

[pgbouncer]
listen_addr = {host}
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {auth_file}
pool_mode = session
max_client_conn = 500
default_pool_size = 100
"""


class BenchError(RuntimeError):
    """The bench could not set up or keep up a path it needs."""


@dataclass(frozen=True)
class Endpoint:
    """One path to the pgbench database, and the proxy process to charge CPU time to."""

    name: str
    port: int
    user: str
    password: str
    pid: int | None  # None: direct, no proxy in between
    log: Path | None = None
    host: str = HOST
    dbname: str = TARGET_DB
    cases: tuple[str, ...] = ()  # the only cases to run through this path (empty: all)

    def env(self) -> dict[str, str]:
        """libpq environment for pgbench and psql; the password never appears in an argv."""
        return {
            **os.environ,
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": self.dbname,
            "PGSSLMODE": "disable",
            "PGCONNECT_TIMEOUT": "10",
        }


@dataclass(frozen=True)
class Stack:
    postgres: PostgresServer
    endpoints: tuple[Endpoint, ...]


@contextlib.contextmanager
def bench_stack(workdir: Path, scale: int) -> Iterator[Stack]:
    """Postgres, pgbouncer and pgwarden (one per config variant), ready for pgbench."""
    with postgres_server() as pg, contextlib.ExitStack() as stack:
        deployment = PgwardenDeployment(pg)
        deployment.prepare()
        init_pgbench(pg, scale)
        password = deployment.rw_password
        endpoints = [Endpoint("direct", pg.port, RW_ROLE, password, None)]
        endpoints.append(
            stack.enter_context(running_pgbouncer(pg, password, workdir / "pgbouncer"))
        )
        for name, variant in VARIANTS.items():
            proxy = running_pgwarden(deployment, workdir / name, name, variant)
            endpoints.append(stack.enter_context(proxy))
        yield Stack(pg, tuple(endpoints))


def init_pgbench(pg: PostgresServer, scale: int) -> None:
    """pgbench's tables in the target database, owned by the superuser, usable by the RW role."""
    env = {**os.environ, "PGPASSWORD": pg.superuser_password, "PGSSLMODE": "disable"}
    argv = ["pgbench", "-i", "-q", "-s", str(scale), "-h", pg.host, "-p", str(pg.port),
            "-U", pg.superuser, TARGET_DB]  # fmt: skip
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=INIT_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"pgbench -i failed ({result.returncode}): {result.stderr[-2000:]}")
    with psycopg.connect(pg.dsn(dbname=TARGET_DB), autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(
                sql.Identifier(RW_ROLE)
            )
        )


# --- pgwarden -------------------------------------------------------------------------------


@contextlib.contextmanager
def running_pgwarden(
    deployment: PgwardenDeployment, directory: Path, name: str, variant: Variant
) -> Iterator[Endpoint]:
    """`python -m proxy serve` in its own directory, with a credential for an active grant."""
    directory.mkdir(mode=0o700, parents=True)
    config = deployment.write_files(directory)  # policy.yaml, and the env vars it names
    port = free_loopback_port()
    config.write_text(
        PGWARDEN_CONFIG.format(
            host=HOST,
            port=port,
            audit_extra=variant.audit_extra,
            sections=variant.sections,
            workers=variant.workers,
        )
    )
    log = directory / "pgwarden.log"
    argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
    with child_process(argv, log) as proc:
        wait_until_listening(port, proc, log)
        credential = issue_credential(directory / "state.db", directory / "policy.yaml")
        yield Endpoint(
            name, port, credential.username, credential.password, proc.pid, log,
            cases=variant.cases,
        )  # fmt: skip


def issue_credential(
    state: Path, policy: Path, *, user: str = "alice", target: str = TARGET_DB,
    level: str = "read-write", reason: str = "benchmark",
) -> IssuedCredential:  # fmt: skip
    """Request, approve (by carol) and issue: an active grant, read-write for alice on the bench's
    target unless told otherwise, as the API will."""
    store = SqliteStore(state)
    try:
        holder = PolicyHolder.open(policy)
        grants = GrantService(store, SYSTEM_CLOCK, lambda: holder.current)
        request = grants.create_request(
            UserName(user), TargetName(target), AccessLevelName(level), GRANT_DURATION, reason
        )
        grants.approve(request.id, UserName("carol"), reason)
        return grants.issue_credential(request.id, UserName(user))
    finally:
        store.close()


# --- pgbouncer ------------------------------------------------------------------------------


@contextlib.contextmanager
def running_pgbouncer(pg: PostgresServer, password: str, directory: Path) -> Iterator[Endpoint]:
    """pgbouncer in session mode in front of the target database, as the read-write role."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).is_file():
        raise BenchError("pgbouncer is not installed: `apt-get install -y pgbouncer`")
    directory.mkdir(mode=0o700, parents=True)
    ids = os_user_ids(PGBOUNCER_OS_USER)
    port = free_loopback_port()
    auth_file, ini = directory / "userlist.txt", directory / "pgbouncer.ini"
    log = directory / "pgbouncer.log"  # pgbouncer in the foreground logs to stderr
    auth_file.write_text(f'"{RW_ROLE}" "{scram_verifier(pg, RW_ROLE)}"\n')
    ini.write_text(
        PGBOUNCER_INI.format(
            dbname=TARGET_DB, pg_host=pg.host, pg_port=pg.port, host=HOST, port=port,
            auth_file=auth_file,
        )
    )  # fmt: skip
    auth_file.chmod(0o600)
    if ids is not None:
        for path in (directory, auth_file, ini):
            os.chown(path, *ids)
    with child_process([binary, str(ini)], log, ids) as proc:
        wait_until_listening(port, proc, log)
        yield Endpoint("pgbouncer", port, RW_ROLE, password, proc.pid, log)


def scram_verifier(pg: PostgresServer, role: str) -> str:
    with pg.connect() as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
        found = row.fetchone()
    if found is None or not str(found[0]).startswith("SCRAM-SHA-256$"):
        raise BenchError(f"role {role!r} has no SCRAM verifier for pgbouncer's auth_file")
    return str(found[0])


def os_user_ids(user: str) -> tuple[int, int] | None:
    """The uid/gid to run a daemon as: `user` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise BenchError(f"running as root but there is no {user!r} OS user") from exc
    return entry.pw_uid, entry.pw_gid


# --- processes ------------------------------------------------------------------------------


@contextlib.contextmanager
def child_process(
    argv: list[str], log: Path, ids: tuple[int, int] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group, output to `log`; the group is stopped on exit."""
    user, group = ids if ids is not None else (None, None)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, user=user, group=group,
            extra_groups=None if ids is None else [],
        )  # fmt: skip
    try:
        yield proc
    finally:
        stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)


def wait_until_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args!r} exited ({proc.returncode}):\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.05)
    raise BenchError(f"{proc.args!r} did not listen on {HOST}:{port} in time:\n{tail(log)}")


def tail(path: Path, max_bytes: int = 4000) -> str:
    if not path.exists():
        return ""
    return path.read_bytes()[-max_bytes:].decode("utf-8", "replace")


def make_workdir() -> Path:
    """A private temporary directory that pgbouncer's OS user may pass through to its own."""
    workdir = Path(tempfile.mkdtemp(prefix="pgwarden-bench-"))
    workdir.chmod(0o711)
    return workdir
