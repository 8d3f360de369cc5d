"""Fixtures shared by the raw-socket adversarial tests (SECURITY.md rows 1-8, 11, 13, 25, 26, 33).

pgwarden here runs with a throttle that never triggers: the tests send many deliberate protocol
violations from 127.0.0.1, and each ends with a real login that must not be throttled (row 17 has
tests of its own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from proxy.net.certs import DevCertificates, generate_dev_certificates
from tests.fixtures.adversary import (
    Credential,
    UpstreamSpy,
    assert_clean_rejection,
    unthrottled_config,
    wait_for_quiet_database,
)
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.postgres import PostgresServer


@pytest.fixture(scope="module")
def pgwarden(
    deployment: PgwardenDeployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPgwarden]:
    """pgwarden with the default test policy and an unthrottled source."""
    config = unthrottled_config(deployment, tmp_path_factory.mktemp("pgwarden"))
    with running_pgwarden(config) as instance:
        yield instance


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    """A development CA and server certificate, for the tests of each module that need TLS."""
    return generate_dev_certificates(tmp_path_factory.mktemp("adversarial-tls"))


@pytest.fixture(scope="module")
def tls_pgwarden(
    deployment: PgwardenDeployment,
    certificates: DevCertificates,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningPgwarden]:
    """pgwarden as `pgwarden` above, offering TLS with `certificates`."""
    directory = tmp_path_factory.mktemp("pgwarden-tls")
    tls = (certificates.server_cert, certificates.server_key)
    with running_pgwarden(unthrottled_config(deployment, directory, tls=tls)) as instance:
        yield instance


@pytest.fixture(scope="module")
def credential(pgwarden: RunningPgwarden) -> Credential:
    issued = pgwarden.grant()
    return issued.username, issued.password


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> UpstreamSpy:
    return UpstreamSpy().install(monkeypatch)


@pytest.fixture
def clean(
    pgwarden: RunningPgwarden, spy: UpstreamSpy, postgres: PostgresServer, credential: Credential
) -> Callable[[], None]:
    """Call at the end of a rejection test: no upstream login, no slot held, logins work."""
    wait_for_quiet_database(postgres)
    return lambda: assert_clean_rejection(pgwarden, spy, postgres, credential)
