"""The PostgreSQL state store: tests/unit/grants/test_store.py's tests of every store, then its
own schema, migrations (replicas opening an empty database at once) and write serialization."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from proxy.grants.pg_schema import SCHEMA_VERSION, lock_key
from proxy.grants.pg_store import PostgresStore
from proxy.grants.requests import RequestId
from proxy.grants.store_watch import StoreError
from tests.fixtures.pg_state import STATE_DATABASE, PgState, quoted
from tests.fixtures.postgres import PostgresServer
from tests.unit.grants.test_store import (
    TABLES,
    a_request,
    test_a_closed_store_is_refused,
    test_a_failed_transaction_leaves_nothing_behind,
    test_a_read_transaction_refuses_writes,
    test_a_request_round_trips_with_every_field,
    test_a_schema_check_refuses_an_active_request_without_a_window,
    test_a_token_round_trips_moves_no_counter_and_is_revoked_once,
    test_active_grants_match_names_exactly,
    test_an_approval_of_a_missing_request_is_refused,
    test_an_approver_is_recorded_once,
    test_due_requests_are_the_ended_active_and_the_stale_pending,
    test_names_sort_by_their_bytes_whatever_the_locale,
    test_one_store_serves_many_threads,
    test_reopening_keeps_the_data,
    test_the_counter_moves_once_per_committed_write,
    test_transactions_do_not_nest,
)

__all__ = [
    "test_a_closed_store_is_refused",
    "test_a_failed_transaction_leaves_nothing_behind",
    "test_a_read_transaction_refuses_writes",
    "test_a_request_round_trips_with_every_field",
    "test_a_schema_check_refuses_an_active_request_without_a_window",
    "test_a_token_round_trips_moves_no_counter_and_is_revoked_once",
    "test_active_grants_match_names_exactly",
    "test_an_approval_of_a_missing_request_is_refused",
    "test_an_approver_is_recorded_once",
    "test_due_requests_are_the_ended_active_and_the_stale_pending",
    "test_names_sort_by_their_bytes_whatever_the_locale",
    "test_one_store_serves_many_threads",
    "test_reopening_keeps_the_data",
    "test_the_counter_moves_once_per_committed_write",
    "test_transactions_do_not_nest",
]
REPLICAS = 6


def versions(state: PgState) -> list[tuple[int, str]]:
    return [(v, app) for v, app in state.query("SELECT version, application FROM schema_version")]


# --- schema and migrations ------------------------------------------------------------------


def test_a_new_schema_gets_every_table_and_its_version(fresh_schema: PgState) -> None:
    fresh_schema.open()
    tables = {
        name
        for (name,) in fresh_schema.query(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", fresh_schema.schema
        )
    }
    assert tables >= {*TABLES, "api_tokens", "schema_version"}
    assert versions(fresh_schema) == [(v, "pgwarden") for v in range(1, SCHEMA_VERSION + 1)]
    # Names compare by bytes, whatever the database's default collation.
    collations = fresh_schema.query(
        "SELECT DISTINCT c.collname FROM pg_attribute a JOIN pg_class r ON r.oid = a.attrelid "
        "JOIN pg_collation c ON c.oid = a.attcollation WHERE r.relname = 'requests' "
        "AND r.relnamespace = to_regnamespace(%s) AND a.attname IN "
        "('id', 'requester', 'target', 'access_level', 'state')",
        quoted(fresh_schema.schema),
    )
    assert collations == [("C",)]


def test_replicas_opening_an_empty_schema_at_once_migrate_it_once(fresh_schema: PgState) -> None:
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(REPLICAS)

    def replica() -> None:
        barrier.wait()
        try:
            opened.append(fresh_schema.open())
        except BaseException as exc:  # reported below
            errors.append(exc)

    run_all([replica] * REPLICAS)
    assert errors == []
    assert versions(fresh_schema) == [(v, "pgwarden") for v in range(1, SCHEMA_VERSION + 1)]
    with opened[0].write() as tx:
        tx.insert_request(a_request())
    with opened[-1].read() as tx:  # one store, whichever replica asks
        assert tx.get_request(RequestId("r1")) == a_request()


def test_a_schema_from_a_newer_pgwarden_is_refused_and_left_alone(fresh_schema: PgState) -> None:
    fresh_schema.open().close()
    newer = SCHEMA_VERSION + 1
    fresh_schema.execute(f"INSERT INTO schema_version (version, application) VALUES ({newer}, "
                         "'pgwarden')")  # fmt: skip
    with pytest.raises(StoreError, match=f"schema version {newer}, newer than this pgwarden"):
        fresh_schema.open()
    assert versions(fresh_schema)[-1] == (newer, "pgwarden")


def test_a_schema_that_holds_other_tables_is_not_taken_over(fresh_schema: PgState) -> None:
    name = quoted(fresh_schema.schema)
    fresh_schema.execute(f"CREATE SCHEMA {name}; CREATE TABLE {name}.orders (id int)")
    with pytest.raises(StoreError, match="holds tables but no schema_version"):
        fresh_schema.open()
    assert fresh_schema.query(
        "SELECT count(*) FROM pg_tables WHERE schemaname = %s", fresh_schema.schema
    ) == [(1,)]


def test_a_database_not_in_utf8_is_refused(state_database: PostgresServer) -> None:
    with state_database.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS pgwarden_state_ascii")
        conn.execute(
            "CREATE DATABASE pgwarden_state_ascii TEMPLATE template0 ENCODING 'SQL_ASCII' "
            "LOCALE 'C'"
        )
    try:
        with pytest.raises(StoreError, match="encoded in SQL_ASCII, not UTF8"):
            PostgresStore(state_database.dsn(dbname="pgwarden_state_ascii"))
    finally:
        with state_database.connect() as conn:
            conn.execute("DROP DATABASE pgwarden_state_ascii WITH (FORCE)")


# --- one write at a time, reads never wait ----------------------------------------------------


def test_a_write_waits_for_another_servers_write_and_reads_do_not(pg_state: PgState) -> None:
    first, second = pg_state.open(), pg_state.open()  # two servers' stores
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def long_write() -> None:
        with first.write() as tx:
            tx.insert_request(a_request("r1"))
            holding.set()
            release.wait(timeout=10)
            order.append("first commits")

    def second_write() -> None:
        holding.wait(timeout=10)
        with second.write() as tx:
            order.append("second writes")
            assert tx.get_request(RequestId("r1")) is not None  # sees what the first committed
            tx.insert_request(a_request("r2"))

    threads = [threading.Thread(target=long_write), threading.Thread(target=second_write)]
    for thread in threads:
        thread.start()
    holding.wait(timeout=10)
    wait_for_lock_waiter(pg_state)  # the second write is queued on the lock
    with second.read() as tx:  # a read goes by, and sees nothing uncommitted
        assert tx.get_request(RequestId("r1")) is None
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert order == ["first commits", "second writes"]
    assert second.changes() == 2


def wait_for_lock_waiter(state: PgState) -> None:
    """Until a session waits for the store's advisory lock (bounded: 10 s). A bigint key shows
    in pg_locks as its high and low halves."""
    key = lock_key(state.schema) & 0xFFFF_FFFF_FFFF_FFFF
    for _ in range(1000):
        rows = state.query(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = %s)",
            key >> 32,
            key & 0xFFFF_FFFF,
            STATE_DATABASE,
        )
        if rows[0][0]:
            return
        time.sleep(0.01)
    raise AssertionError("no write waited for the lock")


def run_all(targets: list[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)


def test_a_connection_string_that_does_not_parse_is_not_echoed() -> None:
    with pytest.raises(StoreError) as caught:
        PostgresStore("host=db password=hunter2 garbage")
    assert "hunter2" not in str(caught.value)
