"""Through a real pgwarden to PostgreSQL with psycopg: one record per round trip, and the log
names every statement and parameter the database ran, in order, with its outcome.

Simple queries (two statements in one), extended ones with parameters, prepared statements
(psycopg prepares a query it has run five times), pipelines, and errors at Bind, at Execute and
mid-pipeline; the log is read back as `tests/fixtures/query_log.py` reads it, and compared with
what the client ran.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.pgwarden import PgwardenDeployment, running_pgwarden
from tests.fixtures.query_log import Executed, executed, outcomes
from tests.integration.test_audit_scenario import grant_through_runtime, verify

pytestmark = pytest.mark.integration

# Fails while it runs, on the row where g equals the parameter (not at Bind: no constant to fold).
DIVIDE = "SELECT 10 / (g - %t::int) FROM generate_series(1, 3) g"


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def ok(text: str, *params: str, tag: str = "SELECT 1") -> Executed:
    return ("execute", text, tuple(p.encode() for p in params), (tag,), None)


def failed(text: str, *params: str) -> Executed:
    return ("execute", text, tuple(p.encode() for p in params), (), "22012")


def test_every_statement_and_parameter_the_database_ran_is_on_record_with_its_outcome(
    deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    with running_pgwarden(deployment.write_files(tmp_path)) as warden:
        credential = grant_through_runtime(warden)
        with psycopg.connect(warden.dsn(credential), autocommit=True) as conn:
            conn.execute("SELECT 1; SELECT name FROM items LIMIT 1")
            assert conn.execute("SELECT %t::int + %t::int", (1, 2)).fetchone() == (3,)
            with pytest.raises(psycopg.errors.DivisionByZero):  # at Bind: 7 / 0 is folded
                conn.execute("SELECT %t::int / 0", (7,))
            with pytest.raises(psycopg.errors.DivisionByZero):  # at Execute, on the 2nd row
                conn.execute(DIVIDE, (2,)).fetchall()
            with conn.pipeline():
                conn.execute("SELECT %t::text", ("first",))
                conn.execute("SELECT %t::text", ("second",))
            with pytest.raises(psycopg.errors.DivisionByZero):
                pipeline_with_an_error(conn)
            for value in range(7):  # prepared from the sixth on: Bind by name only
                assert conn.execute("SELECT %t::int * 2", (value,)).fetchone() == (2 * value,)
            with pytest.raises(psycopg.errors.UndefinedColumn):
                conn.execute("SELECT nope FROM items")
    written = records(tmp_path / "audit.jsonl")
    divide = DIVIDE.replace("%t", "$1")
    assert executed(written) == [
        ("query", "SELECT 1; SELECT name FROM items LIMIT 1", None, ("SELECT 1", "SELECT 1"),
         None),
        ok("SELECT $1::int + $2::int", "1", "2"),
        failed(divide, "2"),
        ok("SELECT $1::text", "first"),
        ok("SELECT $1::text", "second"),
        ok("SELECT $1::int", "10"),
        failed(divide, "3"),
        *(ok("SELECT $1::int * 2", str(value)) for value in range(7)),
        ("query", "SELECT nope FROM items", None, (), "42703"),
    ]  # fmt: skip
    batches = [r for r in written if r["kind"] == "query.batch"]
    settled = outcomes(written)
    assert sorted(settled) == [r["n"] for r in batches]  # every record settled, once
    assert all(len(each) == 1 for each in settled.values())
    # The Bind that failed is on record with its value, and the failing step named.
    (folded,) = [r for r in batches if r["steps"][0].get("text") == "SELECT $1::int / 0"]
    assert folded["steps"][1]["params"] == ["7"]
    (outcome,) = settled[folded["n"]]
    assert (outcome["status"], outcome["step"], outcome["sqlstate"]) == ("error", 1, "22012")
    # The statement after the failed one in the pipeline: on record, not run (in a record of
    # its own, `skipped`; or after the failed step in the same record).
    (after,) = [r for r in batches if any(s.get("params") == ["30"] for s in r["steps"])]
    (outcome,) = settled[after["n"]]
    bind = next(i for i, s in enumerate(after["steps"]) if s.get("params") == ["30"])
    assert outcome["status"] == "skipped" or outcome["step"] < bind
    named = [step for r in batches for step in r["steps"] if step.get("statement") == "_pg3_0"]
    assert [step["params"] for step in named] == [["5"], ["6"]]
    assert verify(tmp_path / "audit.jsonl").returncode == 0


def pipeline_with_an_error(conn: psycopg.Connection[Any]) -> None:
    with conn.pipeline():
        conn.execute("SELECT %t::int", (10,))
        conn.execute(DIVIDE, (3,))
        conn.execute("SELECT %t::int", (30,))  # skipped by the database
