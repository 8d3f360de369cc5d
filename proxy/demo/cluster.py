"""A throwaway PostgreSQL cluster on a free loopback port: `initdb`, `pg_ctl start`, and away.

For the demo and the test harness only, never for real data: durability is switched off. The
binaries come from `PGWARDEN_PG_BINDIR`, `pg_config --bindir`, `/usr/lib/postgresql/*/bin` (newest
first) or PATH. Postgres refuses to run as root, so as root the cluster runs as the `postgres` OS
user. `stop()` removes everything; an `atexit` hook does it too if the process dies first.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "pgwarden_admin"
START_TIMEOUT_SECONDS = 60
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "password_encryption": "'scram-sha-256'",
    "max_connections": "300",
    "fsync": "off",  # a throwaway cluster: durability costs time and buys nothing here
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'128MB'",
    "log_connections": "on",
    "log_disconnections": "on",
    "log_min_messages": "'warning'",
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be found or started."""


@dataclass(eq=False)
class LocalCluster:
    """A running throwaway cluster: where it listens and how to log in as its superuser."""

    host: str
    port: int
    superuser: str
    superuser_password: str = field(repr=False)
    bindir: Path
    root: Path
    log_path: Path
    _ids: tuple[int, int] | None = field(repr=False, default=None)

    def stop(self) -> None:
        """Stop the server (immediately) and delete its files. Safe to call twice."""
        atexit.unregister(self.stop)
        pg_ctl = str(self.bindir / "pg_ctl")
        datadir = str(self.root / "data")
        with contextlib.suppress(PostgresUnavailable, subprocess.SubprocessError, OSError):
            _run_as(self._ids, [pg_ctl, "-D", datadir, "-m", "immediate", "-w", "stop"], 60)
        shutil.rmtree(self.root, ignore_errors=True)


def find_pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    candidates: list[Path] = []
    if env := os.environ.get("PGWARDEN_PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(  # noqa: S603 - pg_config found on PATH, fixed arguments
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates.extend(Path(p) for p in versions)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parts[-2])
    except (ValueError, IndexError):
        return 0


# Ports picked now and bound later (a server started with the port in its config) come from
# below the kernel's ephemeral range: the local port of an outgoing connection, which the kernel
# takes from that range, can then not take them in between.
PORT_FLOOR = 20000
PORT_TRIES = 50
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (see PORT_FLOOR)."""
    low = _ephemeral_low()
    for _ in range(PORT_TRIES if low > PORT_FLOOR + PORT_TRIES else 0):
        port = PORT_FLOOR + secrets.randbelow(low - PORT_FLOOR)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use: another
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (0 where it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _demote_to(user: str) -> tuple[int, int] | None:
    """The uid/gid to run Postgres as: `user` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise PostgresUnavailable(
            f"running as root but there is no {user!r} OS user to run PostgreSQL as"
        ) from exc
    return entry.pw_uid, entry.pw_gid


def _run_as(ids: tuple[int, int] | None, args: list[str], timeout: float) -> None:
    """Run a Postgres tool, as `ids` when given; its output goes into the error when it fails.

    `args` are built here from the Postgres bindir and our own paths, never from user input."""
    if ids is None:
        result = subprocess.run(  # noqa: S603
            args, capture_output=True, text=True, timeout=timeout, check=False
        )
    else:
        result = subprocess.run(  # noqa: S603
            args, capture_output=True, text=True, timeout=timeout, check=False,
            user=ids[0], group=ids[1], extra_groups=[],
        )  # fmt: skip
    if result.returncode != 0:
        raise PostgresUnavailable(
            f"{Path(args[0]).name} failed ({result.returncode}): {result.stderr or result.stdout}"
        )


def start_local_cluster(bindir: Path | None = None) -> LocalCluster:
    """initdb + pg_ctl start on a free loopback port, as the postgres OS user when root."""
    bindir = bindir or find_pg_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL's initdb was not found: install it (apt-get install -y postgresql)"
        )
    ids = _demote_to("postgres")
    root = Path(tempfile.mkdtemp(prefix="pgwarden-pg-"))
    password = secrets.token_urlsafe(18)
    try:
        return _init_and_start(bindir, ids, root, password)
    except BaseException:  # Ctrl-C or a failure half-way: leave nothing behind
        shutil.rmtree(root, ignore_errors=True)
        raise


def _init_and_start(
    bindir: Path, ids: tuple[int, int] | None, root: Path, password: str
) -> LocalCluster:
    datadir, pwfile = root / "data", root / "pwfile"
    pwfile.write_text(password + "\n")
    if ids is not None:
        os.chown(root, *ids)
        os.chown(pwfile, *ids)
    _run_as(
        ids,
        [str(bindir / "initdb"), "-D", str(datadir), "-U", SUPERUSER, f"--pwfile={pwfile}",
         "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale"],
        timeout=120,
    )  # fmt: skip
    pwfile.unlink()
    cluster = LocalCluster(
        "127.0.0.1", free_loopback_port(), SUPERUSER, password, bindir, root,
        root / "postgres.log", ids,
    )  # fmt: skip
    _configure(cluster)
    atexit.register(cluster.stop)  # a crashed process must not leave a postmaster behind
    try:
        _run_as(
            ids,
            [str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(cluster.log_path), "-w", "-t",
             str(START_TIMEOUT_SECONDS), "start"],
            timeout=START_TIMEOUT_SECONDS + 10,
        )  # fmt: skip
    except BaseException:
        cluster.stop()  # pg_ctl may have started the postmaster before it was interrupted
        raise
    return cluster


def _configure(cluster: LocalCluster) -> None:
    with (cluster.root / "data" / "postgresql.conf").open("a") as conf:
        conf.write("\n# pgwarden: a throwaway cluster\n")
        for key, value in {**SERVER_SETTINGS, "port": str(cluster.port)}.items():
            conf.write(f"{key} = {value}\n")
        conf.write(f"unix_socket_directories = '{cluster.root}'\n")
