"""Shared fixtures: a real PostgreSQL per test session, and its log on failure; and the Hypothesis
profile of the run (tests/fixtures/examples.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.examples import load_profile
from tests.fixtures.pgwarden import PgwardenDeployment
from tests.fixtures.postgres import (
    PostgresServer,
    PostgresUnavailable,
    acquire_postgres,
    release_postgres,
)

load_profile()  # Hypothesis: full example counts, or the fast profile of `make unit`

_SERVER_KEY = pytest.StashKey[PostgresServer]()


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (see tests/fixtures/postgres.py for where it comes from)."""
    try:
        server = acquire_postgres()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    request.config.stash[_SERVER_KEY] = server
    yield server
    release_postgres(server)


@pytest.fixture(scope="session")
def deployment(postgres: PostgresServer) -> PgwardenDeployment:
    """The target database `orders` with its read-only and read-write roles (integration and
    browser tests)."""
    prepared = PgwardenDeployment(postgres)
    prepared.prepare()
    return prepared


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the end of the Postgres log to the report of a failed test that used the server."""
    report = yield
    if report.failed and "postgres" in getattr(item, "fixturenames", ()):
        server = item.config.stash.get(_SERVER_KEY, None)
        if server is not None and (tail := server.log_tail()):
            report.sections.append(("PostgreSQL log (tail)", tail))
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run in which no test passed is a failure, never a silent green."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    passed = len(reporter.stats.get("passed", ())) if reporter is not None else 0
    if exitstatus == pytest.ExitCode.OK and passed == 0:
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
