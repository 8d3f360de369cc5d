"""The role pgwarden uses for its state database needs what the README says, and no more: its
own schema (`CREATE SCHEMA pgwarden AUTHORIZATION <role>`), or CREATE on the database to make
it. A role that has neither is told what to run; a privilege taken away under a running store
is a clear "permission denied", not a traceback. TLS is what the DSN asks for.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from proxy.grants.pg_store import PostgresStore
from proxy.grants.requests import RequestId
from proxy.grants.store_watch import Problem, StateStoreUnavailable, StoreError
from tests.fixtures.pg_state import STATE_DATABASE, new_schema_name, quoted
from tests.fixtures.postgres import PostgresServer
from tests.unit.grants.test_store import a_request


@dataclass(frozen=True)
class StateRole:
    server: PostgresServer
    name: str
    password: str

    @property
    def dsn(self) -> str:
        return self.server.dsn(user=self.name, password=self.password, dbname=STATE_DATABASE)

    def admin(self, *statements: str) -> None:
        """As the superuser, in the state database."""
        with psycopg.connect(self.server.dsn(dbname=STATE_DATABASE), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def role(state_database: PostgresServer) -> Iterator[StateRole]:
    """A login role with no privilege beyond what PUBLIC has (CONNECT, TEMPORARY)."""
    made = StateRole(state_database, f"pgw_state_{os.getpid()}", secrets.token_hex(12))
    with state_database.connect() as conn:
        conn.execute(f"CREATE ROLE {made.name} LOGIN PASSWORD '{made.password}'")  # type: ignore[arg-type]
    yield made
    made.admin(f"DROP OWNED BY {made.name}")
    with state_database.connect() as conn:
        conn.execute(f"DROP ROLE {made.name}")  # type: ignore[arg-type]


def test_a_role_that_owns_its_schema_needs_no_other_privilege(role: StateRole) -> None:
    schema = new_schema_name("owned")
    role.admin(f"CREATE SCHEMA {quoted(schema)} AUTHORIZATION {role.name}")
    with PostgresStore(role.dsn, schema=schema) as store:
        with store.write() as tx:
            tx.insert_request(a_request())
        with store.read() as tx:
            assert tx.get_request(RequestId("r1")) == a_request()
    with role.server.connect() as conn:
        row = conn.execute(
            "SELECT has_database_privilege(%s, %s, 'CREATE')", (role.name, STATE_DATABASE)
        ).fetchone()
    assert row == (False,)


def test_a_role_that_may_not_make_its_schema_is_told_how(role: StateRole) -> None:
    schema = new_schema_name("missing")
    with pytest.raises(StoreError) as caught:
        PostgresStore(role.dsn, schema=schema)
    assert str(caught.value) == (
        f"postgresql://{role.server.host}:{role.server.port}/{STATE_DATABASE} (schema {schema}): "
        f"the schema {schema} does not exist and this role may not create it; create it for "
        f'the state role: CREATE SCHEMA "{schema}" AUTHORIZATION <state role>'
    )


def test_a_privilege_taken_away_refuses_writes_as_denied_until_given_back(
    role: StateRole,
) -> None:
    schema = new_schema_name("revoked")
    role.admin(f"CREATE SCHEMA {quoted(schema)} AUTHORIZATION {role.name}")
    with PostgresStore(role.dsn, schema=schema) as store:
        role.admin(f"REVOKE INSERT ON {quoted(schema)}.requests FROM {role.name}")
        with pytest.raises(StateStoreUnavailable) as caught, store.write() as tx:
            tx.insert_request(a_request())
        assert caught.value.problem is Problem.DENIED
        assert str(caught.value) == (
            f"the state store {store.where} cannot be written (permission denied); approvals "
            "and credentials are refused until it can"
        )
        assert store.changes() == 0  # reads go on
        role.admin(f"GRANT INSERT ON {quoted(schema)}.requests TO {role.name}")
        assert store.check() is None


def test_tls_is_what_the_dsn_asks_for(role: StateRole) -> None:
    # The harness server has no TLS: a DSN that requires it is refused, not quietly downgraded.
    with pytest.raises(StoreError, match="SSL"):
        PostgresStore(role.dsn + " sslmode=require")
