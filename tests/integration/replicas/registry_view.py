"""The replica registry as the tests look at it: rows of the state schema, as the superuser."""

from __future__ import annotations

from typing import Any

import psycopg

from proxy.grants.pg_connection import quoted
from tests.fixtures.replicas import Replicas


def registry_rows(replicas: Replicas, statement: str, *params: object) -> list[tuple[Any, ...]]:
    """Run `statement` on the replicas' schema as the state cluster's superuser."""
    with psycopg.connect(replicas.state.server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", (quoted(replicas.schema),))
        return conn.execute(statement, params).fetchall()


def listed(replicas: Replicas, via: str, request_id: str, user: str = "carol") -> list[Any]:
    """The sessions of grant `request_id` that replica `via`'s API lists."""
    status, body = replicas[via].call("GET", "/api/v1/sessions", user)
    assert status == 200, body
    return [s for s in body["sessions"] if s["request_id"] == request_id]
