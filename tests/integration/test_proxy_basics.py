"""A real client through a real pgwarden to the real Postgres: the data path works."""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.pgwarden import RO_ROLE, RunningPgwarden

pytestmark = pytest.mark.integration


def test_psycopg_logs_in_with_a_temporary_credential_and_queries(pgwarden: RunningPgwarden) -> None:
    credential = pgwarden.grant()
    with psycopg.connect(pgwarden.dsn(credential)) as conn:
        row = conn.execute("SELECT current_user, current_database(), 1 + 1").fetchone()
    assert row == (RO_ROLE, "orders", 2)
