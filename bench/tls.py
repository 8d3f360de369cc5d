"""TLS for the bench's `-tls` paths: one certificate for every server, PostgreSQL with `ssl=on`.

Every TLS path encrypts each hop with `sslmode=require` (encryption, no certificate check, as
libpq means it), so that the three paths do the same cryptographic work per byte and differ only by
the proxy:

    direct-tls     pgbench --TLS--> PostgreSQL
    pgbouncer-tls  pgbench --TLS--> pgbouncer (client_tls_*) --TLS--> PostgreSQL (server_tls_*)
    pgwarden-tls   pgbench --TLS--> pgwarden (proxy.tls)     --TLS--> PostgreSQL (upstream.tls)

The certificate is pgwarden's development certificate (`pgwarden tls dev-cert`'s code: ECDSA
P-256), used by all three servers. PostgreSQL serves plain and TLS clients on the same port, so
the plain paths run exactly as before; TLS is switched on with `ALTER SYSTEM` and a reload, which
needs the harness's own local cluster (its files are where the server can read them).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from proxy.net.certs import generate_dev_certificates
from tests.fixtures.postgres import PostgresServer

TLS_SUFFIX = "-tls"  # path names: direct-tls, pgbouncer-tls, pgwarden-tls
SSLMODE = "require"  # every hop: encrypted, certificate not checked (libpq's meaning)
TLS_READY_TIMEOUT = 15.0  # seconds for PostgreSQL to serve TLS after its reload
TLS_READY_POLL = 0.1  # seconds between login attempts meanwhile
KEY_MODE = 0o600  # PostgreSQL refuses a key file that others may read


class TlsSetupError(RuntimeError):
    """TLS could not be set up for the bench's `-tls` paths."""


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def make_key_pair(directory: Path) -> KeyPair:
    """A development CA and server certificate for 127.0.0.1 (the CA is not used: no checks)."""
    directory.mkdir(mode=0o700, parents=True)
    certs = generate_dev_certificates(directory)
    return KeyPair(certs.server_cert, certs.server_key)


def owned_copy(pair: KeyPair, directory: Path, ids: tuple[int, int] | None) -> KeyPair:
    """A copy of `pair` in `directory`, owned by a daemon's OS user (`ids`; None: ourselves)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    copy = KeyPair(directory / "server.crt", directory / "server.key")
    shutil.copyfile(pair.cert, copy.cert)
    shutil.copyfile(pair.key, copy.key)
    copy.key.chmod(KEY_MODE)
    if ids is not None:
        for path in (directory, copy.cert, copy.key):
            os.chown(path, *ids)
    return copy


def enable_postgres_tls(pg: PostgresServer, pair: KeyPair, ids: tuple[int, int] | None) -> None:
    """Turn on `ssl` in the harness's cluster with a copy of `pair`; plain logins keep working."""
    if pg.log_path is None:
        raise TlsSetupError(
            "the TLS cases need the harness's own PostgreSQL (unset PGWARDEN_TEST_DSN and "
            'PGWARDEN_TEST_DOCKER), or skip them: CASES="-S -c1,-S -c8,..."'
        )
    copy = owned_copy(pair, pg.log_path.parent / "tls", ids)
    with pg.connect() as conn:
        for name, value in (("ssl_cert_file", copy.cert), ("ssl_key_file", copy.key)):
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(
                sql.Identifier(name), sql.Literal(str(value))))  # fmt: skip
        conn.execute("ALTER SYSTEM SET ssl = on")
        conn.execute("SELECT pg_reload_conf()")
    wait_for_tls(pg)


def wait_for_tls(pg: PostgresServer) -> None:
    """Until a `sslmode=require` login works (the reload is asynchronous), bounded in time."""
    deadline = time.monotonic() + TLS_READY_TIMEOUT
    problem = ""
    for _ in range(int(TLS_READY_TIMEOUT / TLS_READY_POLL)):
        try:
            with psycopg.connect(make_conninfo(pg.dsn(), sslmode=SSLMODE)):
                return
        except psycopg.OperationalError as exc:
            problem = str(exc)
        if time.monotonic() > deadline:
            break
        time.sleep(TLS_READY_POLL)
    raise TlsSetupError(f"PostgreSQL does not serve TLS: {problem}\n{pg.log_tail()}")


PGBOUNCER_TLS_LINES = """\
client_tls_sslmode = require
client_tls_cert_file = {cert}
client_tls_key_file = {key}
server_tls_sslmode = require
"""


def pgbouncer_tls_lines(pair: KeyPair) -> str:
    """pgbouncer.ini lines: TLS required from clients, and to PostgreSQL."""
    return PGBOUNCER_TLS_LINES.format(cert=pair.cert, key=pair.key)


def pgwarden_tls_line(pair: KeyPair) -> str:
    """The `proxy.tls` line of pgwarden's config (the policy's `upstream.tls` is set apart)."""
    return f"  tls: {{cert_file: {pair.cert}, key_file: {pair.key}}}"
