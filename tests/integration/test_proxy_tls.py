"""Client-facing TLS through a running pgwarden: verify-full, channel binding, TLS required.

pgwarden gets a throwaway CA and server certificate (`pgwarden tls dev-cert`'s code) and a policy
whose target requires client TLS; real clients (psycopg/libpq and the psql binary) connect.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.net.certs import DevCertificates, generate_dev_certificates
from tests.fixtures.pgwarden import RO_ROLE, PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.rawpg import RawPg

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return generate_dev_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_pgwarden(
    deployment: PgwardenDeployment, certs: DevCertificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPgwarden]:
    config = deployment.write_files(
        tmp_path_factory.mktemp("pgwarden-tls"),
        tls=(certs.server_cert, certs.server_key),
        require_client_tls=True,
    )
    with running_pgwarden(config) as instance:
        yield instance


def verified(pgwarden: RunningPgwarden, certs: DevCertificates, **extra: str) -> dict[str, str]:
    return {"sslmode": "verify-full", "sslrootcert": str(certs.ca_cert), **extra}


def test_psycopg_connects_with_verify_full_against_the_dev_ca(
    tls_pgwarden: RunningPgwarden, certs: DevCertificates
) -> None:
    credential = tls_pgwarden.grant()
    dsn = tls_pgwarden.dsn(credential, **verified(tls_pgwarden, certs))
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == (RO_ROLE,)


def test_channel_binding_required_by_the_client_succeeds_with_scram_plus(
    tls_pgwarden: RunningPgwarden, certs: DevCertificates
) -> None:
    credential = tls_pgwarden.grant()
    dsn = tls_pgwarden.dsn(credential, channel_binding="require", **verified(tls_pgwarden, certs))
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_psql_binary_connects_with_verify_full(
    tls_pgwarden: RunningPgwarden, certs: DevCertificates
) -> None:
    credential = tls_pgwarden.grant()
    env = {**os.environ, "PGPASSWORD": credential.password, "PGSSLMODE": "verify-full",
           "PGSSLROOTCERT": str(certs.ca_cert), "PGCONNECT_TIMEOUT": "10"}  # fmt: skip
    result = subprocess.run(
        ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(tls_pgwarden.port),
         "-U", credential.username, "-d", "orders",
         "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
         "-c", "SELECT current_user"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # The second query proves the session; the first shows the *upstream* link (plain here).
    assert result.stdout.splitlines()[-1] == RO_ROLE


def test_a_plaintext_client_is_refused_before_any_password_exchange(
    tls_pgwarden: RunningPgwarden,
) -> None:
    credential = tls_pgwarden.grant()
    with pytest.raises(psycopg.OperationalError, match="requires an encrypted connection"):
        psycopg.connect(tls_pgwarden.dsn(credential, sslmode="disable")).close()
    with RawPg.connect(tls_pgwarden.host, tls_pgwarden.port) as raw:
        raw.send_startup({"user": credential.username, "database": "orders"})
        fields = raw.expect_error()  # no AuthenticationSASL came first
    assert (fields["S"], fields["C"]) == ("FATAL", "28000")


def test_a_client_trusting_another_ca_refuses_pgwarden(
    tls_pgwarden: RunningPgwarden, tmp_path: Path
) -> None:
    other = generate_dev_certificates(tmp_path / "other")
    credential = tls_pgwarden.grant()
    dsn = tls_pgwarden.dsn(credential, sslmode="verify-full", sslrootcert=str(other.ca_cert))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(dsn).close()
