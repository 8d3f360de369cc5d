"""pgwarden's SCRAM against a real PostgreSQL: verifiers both ways, and a real upstream login.

(a) A verifier from `make_verifier` is stored by Postgres as it is and accepts libpq's login; a
    verifier Postgres made parses and lets our server machine accept our client.
(b) `ScramClient` logs in to Postgres over a raw socket (tests/fixtures/rawpg.py, independent of
    proxy.wire); a wrong password gets Postgres's 28P01.
Non-ASCII passwords check that our SASLprep agrees with Postgres's and libpq's.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from proxy.auth import ScramClient, ScramServer, ScramVerifier, generate_password, make_verifier
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.rawpg import AUTH_OK, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL, RawPg

pytestmark = pytest.mark.integration

NON_ASCII_PASSWORD = "I\u00adX\u2168-p\u00e4ss\u00a0w\u00f6rd"  # SASLprep maps and normalises it
# SASLprep refuses this one (bidi rule, and U+0221 is unassigned in Unicode 3.2): Postgres and
# libpq then hash the raw UTF-8 bytes, and so must we.
PROHIBITED_PASSWORD = "x\u0627\u0031 a\u0221"
PASSWORDS = pytest.mark.parametrize(
    "password",
    [None, NON_ASCII_PASSWORD, PROHIBITED_PASSWORD],
    ids=["generated", "non-ASCII", "SASLprep-prohibited"],
)


@pytest.fixture
def role_name(postgres: PostgresServer) -> Iterator[str]:
    """A fresh role name; the role, if a test made it, is dropped afterwards."""
    name = f"pgwarden_auth_{secrets.token_hex(6)}"
    yield name
    with postgres.connect() as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def create_role(postgres: PostgresServer, name: str, password: str, encryption: str) -> str:
    """CREATE ROLE ... PASSWORD; returns what Postgres stored in pg_authid.rolpassword."""
    with postgres.connect() as conn:
        conn.execute(sql.SQL("SET password_encryption = {}").format(sql.Literal(encryption)))
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,)
        ).fetchone()
    assert row is not None
    return str(row[0])


@PASSWORDS
def test_postgres_stores_our_verifier_as_is_and_accepts_the_password(
    postgres: PostgresServer, role_name: str, password: str | None
) -> None:
    password = password or generate_password()
    verifier = make_verifier(password).to_postgres()
    assert create_role(postgres, role_name, verifier, "scram-sha-256") == verifier
    with psycopg.connect(postgres.dsn(user=role_name, password=password)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role_name,)


@pytest.mark.parametrize(
    "password",
    ["plain-Pa55word", NON_ASCII_PASSWORD, PROHIBITED_PASSWORD],
    ids=["ascii", "non-ASCII", "SASLprep-prohibited"],
)
def test_a_postgres_made_verifier_works_in_our_server(
    postgres: PostgresServer, role_name: str, password: str
) -> None:
    stored = create_role(postgres, role_name, password, "scram-sha-256")
    verifier = ScramVerifier.parse(stored)
    assert verifier.to_postgres() == stored
    server = ScramServer(role_name, verifier, mock_secret=secrets.token_bytes(32))
    client = ScramClient(role_name, password)
    mechanism = client.select_mechanism(server.mechanisms())
    server_first = server.receive_client_first(mechanism, client.client_first())
    client.receive_server_final(
        server.receive_client_final(client.receive_server_first(server_first))
    )
    assert server.succeeded


def raw_login(postgres: PostgresServer, user: str, password: str) -> RawPg:
    """Start a raw connection and run SCRAM with our client up to the server's verdict."""
    pg = RawPg.connect(postgres.host, postgres.port)
    pg.send_startup({"user": user, "database": postgres.dbname})
    client = ScramClient(user, password)
    mechanism = client.select_mechanism(pg.expect_auth_sasl())
    pg.send_sasl_initial(mechanism, client.client_first())
    pg.send_sasl_response(client.receive_server_first(pg.expect_auth(AUTH_SASL_CONTINUE)))
    return pg


@PASSWORDS
def test_our_client_logs_in_to_postgres_over_a_raw_socket(
    postgres: PostgresServer, role_name: str, password: str | None
) -> None:
    password = password or generate_password()
    create_role(postgres, role_name, make_verifier(password).to_postgres(), "scram-sha-256")
    pg = RawPg.connect(postgres.host, postgres.port)
    with pg:
        pg.send_startup({"user": role_name, "database": postgres.dbname})
        client = ScramClient(role_name, password)
        mechanism = client.select_mechanism(pg.expect_auth_sasl())
        assert mechanism == "SCRAM-SHA-256"
        pg.send_sasl_initial(mechanism, client.client_first())
        pg.send_sasl_response(client.receive_server_first(pg.expect_auth(AUTH_SASL_CONTINUE)))
        client.receive_server_final(pg.expect_auth(AUTH_SASL_FINAL))
        pg.expect_auth(AUTH_OK)
        types = [type_ for type_, _ in pg.read_until_ready()]
        assert types[-1] == b"Z"
        assert b"K" in types  # BackendKeyData: a real backend is ready for queries
        pg.terminate()


def test_postgres_refuses_our_client_with_a_wrong_password(
    postgres: PostgresServer, role_name: str
) -> None:
    create_role(postgres, role_name, "the-right-password", "scram-sha-256")
    with raw_login(postgres, role_name, "a-wrong-password") as pg:
        fields = pg.expect_error()
    assert fields["C"] == "28P01"
    assert fields["S"] == "FATAL"
    assert f'password authentication failed for user "{role_name}"' in fields["M"]
