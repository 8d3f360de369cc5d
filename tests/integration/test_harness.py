"""The harness's own promises: a real server that speaks SCRAM on loopback."""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.postgres import PostgresServer

pytestmark = pytest.mark.integration


def test_harness_server_answers_queries(postgres: PostgresServer) -> None:
    with postgres.connect() as conn:
        row = conn.execute("SELECT current_database(), current_setting('password_encryption')")
        assert row.fetchone() == ("pgwarden_test", "scram-sha-256")


def test_harness_server_rejects_a_wrong_password(postgres: PostgresServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.dsn(password="not-the-password")).close()


def test_harness_server_listens_only_on_loopback(postgres: PostgresServer) -> None:
    with postgres.connect() as conn:
        row = conn.execute("SELECT current_setting('listen_addresses')").fetchone()
    assert postgres.host == "127.0.0.1"
    assert row is not None
    assert row[0] in {"127.0.0.1", "localhost", "*"}
