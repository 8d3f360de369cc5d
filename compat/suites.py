"""The client test suites `make compat` runs, their pinned versions, and how each finds a server.

Each suite is the test folder of a driver's source distribution on PyPI (they ship their tests),
run with pytest from the extracted sdist. The driver itself comes from a wheel in the compat venv
(asyncpg's sdist would need Cython and a compiler); psycopg2 has no Linux wheel on PyPI, so it is
built from the same sdist, or replaced by psycopg2-binary of the same version when that build
fails (toolchain.py says which one ran, and the report repeats it).

Every suite runs twice with the same environment but for the endpoint: PostgreSQL itself (as the
role the access level maps to, with its password) and pgwarden (as a pgwarden user, with the
grant's credential). How each suite takes its connection:

- asyncpg: `PGHOST` set makes its test base use the running server (`RunningCluster`) instead of
  starting its own with pg_ctl, and libpq's `PG*` variables fill the connection; the tests that
  need a cluster of their own (custom pg_hba, restarts, a standby) skip themselves then.
- pg8000: its conftest logs in as `postgres` and reads only `PGHOST`, `PGPORT` and `PGPASSWORD`;
  no database is sent, so the server takes the user name, `postgres`.
- psycopg2: `PSYCOPG2_TESTDB*` name the database and login; `PSYCOPG2_TEST_REPL_DSN` empty runs
  its replication tests on the same connection string (as its CI does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# What every suite runs under: pytest, and pytest-timeout so that a hung test fails on its own.
RUNNER_REQUIREMENTS = ("pytest==9.2.0", "pytest-timeout==2.4.0")

# The database every suite uses, the role it logs in as directly, and the pgwarden target in
# front of them. pg8000's suite fixes the user name `postgres` and sends no database name.
DATABASE = "postgres"
ROLE = "postgres"
TARGET = "postgres"
ACCESS_LEVEL = "client-suites"


@dataclass(frozen=True)
class Endpoint:
    """Where a suite connects: PostgreSQL itself, or pgwarden in front of it."""

    path: str  # "direct" or "pgwarden"
    host: str
    port: int
    user: str
    password: str
    dbname: str


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    driver: tuple[str, ...]  # pip requirements installed from wheels only
    test_requirements: tuple[str, ...]  # what its tests import besides the driver and pytest
    pytest_args: tuple[str, ...]  # what to run, relative to the extracted sdist
    # The suite's own file given to pytest's -c (it may hold no pytest section): pytest must
    # not walk up from .cache/compat/src/ and take pgwarden's pyproject.toml for the suite's.
    pytest_config: str
    pgwarden_user: str  # the pgwarden user it logs in as through pgwarden
    environment: Callable[[Endpoint], dict[str, str]]
    built_driver: str | None = None  # a driver built from this suite's own sdist ...
    binary_fallback: str | None = None  # ... or this wheel when the build fails

    @property
    def sdist_requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


def libpq_environment(endpoint: Endpoint) -> dict[str, str]:
    return {
        "PGHOST": endpoint.host,
        "PGPORT": str(endpoint.port),
        "PGUSER": endpoint.user,
        "PGPASSWORD": endpoint.password,
        "PGDATABASE": endpoint.dbname,
    }


def pg8000_environment(endpoint: Endpoint) -> dict[str, str]:
    # The suite's conftest hard-codes user `postgres` and no database; the rest comes from these.
    if endpoint.user != "postgres" or endpoint.dbname != "postgres":
        raise ValueError("pg8000's tests log in as `postgres` to database `postgres`")
    return {
        "PGHOST": endpoint.host,
        "PGPORT": str(endpoint.port),
        "PGPASSWORD": endpoint.password,
    }


def psycopg2_environment(endpoint: Endpoint) -> dict[str, str]:
    return {
        "PSYCOPG2_TESTDB": endpoint.dbname,
        "PSYCOPG2_TESTDB_HOST": endpoint.host,
        "PSYCOPG2_TESTDB_PORT": str(endpoint.port),
        "PSYCOPG2_TESTDB_USER": endpoint.user,
        "PSYCOPG2_TESTDB_PASSWORD": endpoint.password,
        "PSYCOPG2_TEST_REPL_DSN": "",  # empty: the replication tests use the same login
    }


SUITES: tuple[Suite, ...] = (
    Suite(
        name="asyncpg",
        version="0.32.0",
        driver=("asyncpg==0.32.0",),
        test_requirements=("distro==1.9.0",),  # test_connect imports it
        pytest_args=("tests",),  # its pyproject adds --import-mode=importlib --capture=no
        pytest_config="pyproject.toml",
        pgwarden_user="alice",
        environment=libpq_environment,
    ),
    Suite(
        name="pg8000",
        version="1.31.6",
        driver=("pg8000==1.31.6",),
        # Its tox deps that its tests use (the linters and packaging tools aside).
        test_requirements=("pytz==2026.6", "pytest-mock==3.17.0", "pytest-benchmark==5.3.1"),
        pytest_args=("test", "--benchmark-disable"),  # benchmarks run once, as plain tests
        pytest_config="pyproject.toml",
        pgwarden_user="postgres",  # fixed by its conftest
        environment=pg8000_environment,
    ),
    Suite(
        name="psycopg2",
        version="2.9.13",
        driver=(),
        test_requirements=(),
        # Its tests are unittest classes; each module's test_suite() (for unittest's loader)
        # is not a test, so pytest collects no plain functions here.
        pytest_args=("tests", "-o", "python_functions=compat_collects_no_plain_functions"),
        pytest_config="setup.cfg",
        pgwarden_user="alice",
        environment=psycopg2_environment,
        built_driver="psycopg2==2.9.13",
        binary_fallback="psycopg2-binary==2.9.13",
    ),
)


def select(names: str | None) -> tuple[Suite, ...]:
    """The suites named in a comma-separated list (all when None)."""
    if not names:
        return SUITES
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    known = {suite.name: suite for suite in SUITES}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return tuple(known[name] for name in wanted)
