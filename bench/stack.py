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
   to check a client, and logs in upstream with the client's SCRAM keys);
4. for the TLS cases (bench/tls.py): `ssl=on` in that Postgres, and a second pgbouncer and
   pgwarden with TLS on both sides; the `-tls` paths connect with `sslmode=require`.

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

from bench.tls import (
    SSLMODE,
    TLS_SUFFIX,
    KeyPair,
    TlsSetupError,
    enable_postgres_tls,
    make_key_pair,
    owned_copy,
    pgbouncer_tls_lines,
    pgwarden_tls_line,
)
from proxy.clock import SYSTEM_CLOCK
from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import IssuedCredential
from proxy.grants.store import SqliteStore
from proxy.native import PURE_VARIABLE
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
{tls_line}
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
    tls: bool = False  # TLS from clients (proxy.tls) and to Postgres (the target's upstream.tls)
    pure: bool = False  # the hot modules from their Python sources even when compiled (native.py)


# "pgwarden" runs with the default settings (every query recorded, no upstream pool);
# "pgwarden-noaudit" records sessions only; "pgwarden-pool" keeps upstream backends between
# sessions (`upstream_pool`, off by default), which only changes connection setup, so it runs
# only the new-connection-per-transaction case. The "-w2" paths run two worker processes
# (`proxy.workers: 2`) on the cases where one event loop is the limit.
AUDIT_OFF_PATH = "pgwarden-noaudit"
POOL_PATH = "pgwarden-pool"
SCALING_CASES = ("-S -c8", "-S -c32", "-S -M prepared -c8")
PURE_CASES = ("-S -c8", "-S -M extended -c8", "-S -M prepared -c8", "-S -C -c8")
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
    # The "-pure" paths run the hot modules from source where `make compile` compiled them: what
    # the compilation is worth, in the same run.
    "pgwarden-pure": Variant(pure=True, cases=PURE_CASES),
    "pgwarden-noaudit-pure": Variant(
        audit_extra="  record_queries: false", pure=True, cases=("-S -c8",)
    ),
}
# The TLS cases' pgwarden: TLS on both sides, with the default audit and without query records
# (so that the cost of TLS and of the audit can be told apart).
TLS_VARIANTS = {
    "pgwarden" + TLS_SUFFIX: Variant(tls=True),
    AUDIT_OFF_PATH + TLS_SUFFIX: Variant(audit_extra="  record_queries: false", tls=True),
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
{tls_lines}"""


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
    sslmode: str = "disable"  # the TLS paths: "require", and they run the TLS cases only

    @property
    def tls(self) -> bool:
        return self.sslmode != "disable"

    def env(self) -> dict[str, str]:
        """libpq environment for pgbench and psql; the password never appears in an argv."""
        return {
            **os.environ,
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": self.dbname,
            "PGSSLMODE": self.sslmode,
            "PGCONNECT_TIMEOUT": "10",
        }


@dataclass(frozen=True)
class Stack:
    postgres: PostgresServer
    endpoints: tuple[Endpoint, ...]


@contextlib.contextmanager
def bench_stack(workdir: Path, scale: int, *, plain: bool, tls: bool) -> Iterator[Stack]:
    """Postgres, pgbouncer and pgwarden (one per config variant), ready for pgbench: the `plain`
    paths, the `tls` paths, or both."""
    with postgres_server() as pg, contextlib.ExitStack() as stack:
        deployment = PgwardenDeployment(pg)
        deployment.prepare()
        init_pgbench(pg, scale)
        endpoints: list[Endpoint] = []
        if plain:
            endpoints.extend(plain_paths(stack, deployment, workdir))
        if tls:
            endpoints.extend(tls_paths(stack, deployment, workdir))
        yield Stack(pg, tuple(endpoints))


def plain_paths(
    stack: contextlib.ExitStack, deployment: PgwardenDeployment, workdir: Path
) -> Iterator[Endpoint]:
    pg, password = deployment.postgres, deployment.rw_password
    yield Endpoint("direct", pg.port, RW_ROLE, password, None)
    yield stack.enter_context(running_pgbouncer(pg, password, workdir / "pgbouncer"))
    for name, variant in VARIANTS.items():
        yield stack.enter_context(running_pgwarden(deployment, workdir / name, name, variant))


def tls_paths(
    stack: contextlib.ExitStack, deployment: PgwardenDeployment, workdir: Path
) -> Iterator[Endpoint]:
    """The same paths with TLS on every hop (bench/tls.py)."""
    pg, password = deployment.postgres, deployment.rw_password
    try:
        pair = make_key_pair(workdir / "certs")
        enable_postgres_tls(pg, pair, os_user_ids(PGBOUNCER_OS_USER))
    except TlsSetupError as exc:
        raise BenchError(str(exc)) from exc
    yield Endpoint("direct" + TLS_SUFFIX, pg.port, RW_ROLE, password, None, sslmode=SSLMODE)
    bouncer = running_pgbouncer(pg, password, workdir / ("pgbouncer" + TLS_SUFFIX), pair)
    yield stack.enter_context(bouncer)
    for name, variant in TLS_VARIANTS.items():
        yield stack.enter_context(running_pgwarden(deployment, workdir / name, name, variant, pair))


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
    deployment: PgwardenDeployment, directory: Path, name: str, variant: Variant,
    pair: KeyPair | None = None,
) -> Iterator[Endpoint]:  # fmt: skip
    """`python -m proxy serve` in its own directory, with a credential for an active grant;
    a TLS variant serves `pair` to clients and requires TLS to Postgres."""
    directory.mkdir(mode=0o700, parents=True)
    if variant.tls and pair is None:
        raise BenchError(f"{name} needs a certificate")
    # policy.yaml, and the env vars it names
    config = deployment.write_files(directory, upstream_tls=SSLMODE if variant.tls else "disable")
    port = free_loopback_port()
    config.write_text(
        PGWARDEN_CONFIG.format(
            host=HOST,
            port=port,
            tls_line=pgwarden_tls_line(pair) if variant.tls and pair else "",
            audit_extra=variant.audit_extra,
            sections=variant.sections,
            workers=variant.workers,
        )
    )
    log = directory / "pgwarden.log"
    argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
    env = {**os.environ, PURE_VARIABLE: "1"} if variant.pure else None
    with child_process(argv, log, env=env) as proc:
        wait_until_listening(port, proc, log)
        credential = issue_credential(directory / "state.db", directory / "policy.yaml")
        yield Endpoint(
            name, port, credential.username, credential.password, proc.pid, log,
            cases=variant.cases, sslmode=SSLMODE if variant.tls else "disable",
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
def running_pgbouncer(
    pg: PostgresServer, password: str, directory: Path, pair: KeyPair | None = None
) -> Iterator[Endpoint]:
    """pgbouncer in session mode in front of the target database, as the read-write role; with
    `pair`, TLS required from clients and to Postgres (the `-tls` path)."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).is_file():
        raise BenchError("pgbouncer is not installed: `apt-get install -y pgbouncer`")
    directory.mkdir(mode=0o700, parents=True)
    ids = os_user_ids(PGBOUNCER_OS_USER)
    tls = None if pair is None else owned_copy(pair, directory / "tls", ids)
    port = free_loopback_port()
    auth_file, ini = directory / "userlist.txt", directory / "pgbouncer.ini"
    log = directory / "pgbouncer.log"  # pgbouncer in the foreground logs to stderr
    auth_file.write_text(f'"{RW_ROLE}" "{scram_verifier(pg, RW_ROLE)}"\n')
    ini.write_text(
        PGBOUNCER_INI.format(
            dbname=TARGET_DB, pg_host=pg.host, pg_port=pg.port, host=HOST, port=port,
            auth_file=auth_file, tls_lines="" if tls is None else pgbouncer_tls_lines(tls),
        )
    )  # fmt: skip
    auth_file.chmod(0o600)
    if ids is not None:
        for path in (directory, auth_file, ini):
            os.chown(path, *ids)
    with child_process([binary, str(ini)], log, ids) as proc:
        wait_until_listening(port, proc, log)
        name = "pgbouncer" if tls is None else "pgbouncer" + TLS_SUFFIX
        sslmode = "disable" if tls is None else SSLMODE
        yield Endpoint(name, port, RW_ROLE, password, proc.pid, log, sslmode=sslmode)


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
    argv: list[str], log: Path, ids: tuple[int, int] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """A child in its own process group, output to `log` (environment: ours, or `env`); the
    group is stopped on exit."""
    user, group = ids if ids is not None else (None, None)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, user=user, group=group, env=env,
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
