"""The state store: schema and migrations, transactions, round trips, no plaintext.

The SQLite file's own tests come first; the rest take `store` or `store_factory` and run again
against PostgreSQL (tests/integration/state_postgres/test_store_on_postgres.py, which imports
them by name, and adds the PostgreSQL schema's own tests).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from proxy.auth.credentials import make_verifier
from proxy.grants.requests import AccessRequest, Approval, RequestId, RequestState
from proxy.grants.store import SqliteStore, Store, StoreError
from proxy.grants.store_schema import APPLICATION_ID, SCHEMA_VERSION, TokenRecord, from_us, to_us
from proxy.policy.models import AccessLevelName, TargetName, UserName
from tests.fixtures.grants import INTEGRITY_ERRORS, StoreFactory

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
TABLES = {"requests", "approvals", "credentials", "transitions", "change_counter"}


def a_request(id_: str = "r1", **changes: object) -> AccessRequest:
    fields: dict[str, object] = {
        "id": RequestId(id_),
        "requester": UserName("alice"),
        "target": TargetName("prod"),
        "access_level": AccessLevelName("read-only"),
        "requested_duration": timedelta(hours=9),
        "duration": timedelta(hours=4),
        "reason": "incident 42 — ünïcode",
        "state": RequestState.PENDING,
        "created_at": T0,
    }
    fields.update(changes)
    return AccessRequest(**fields)  # type: ignore[arg-type]


def pragma(path: Path, name: str) -> object:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


# --- the SQLite file: schema and migrations -------------------------------------------------


def test_a_fresh_file_gets_the_whole_schema(db_path: Path) -> None:
    SqliteStore(db_path).close()
    with sqlite3.connect(db_path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables >= TABLES
    SqliteStore(db_path).close()  # reopening migrates nothing
    assert pragma(db_path, "user_version") == SCHEMA_VERSION
    assert pragma(db_path, "application_id") == APPLICATION_ID
    assert pragma(db_path, "journal_mode") == "wal"


def test_a_file_from_a_newer_pgwarden_is_refused_and_left_alone(db_path: Path) -> None:
    SqliteStore(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match=f"version {SCHEMA_VERSION + 1}, newer than"):
        SqliteStore(db_path)
    assert pragma(db_path, "user_version") == SCHEMA_VERSION + 1


def test_a_database_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("PRAGMA application_id = 42")
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a pgwarden state database"):
        SqliteStore(other)


def test_connections_are_durable_and_enforce_references(db_path: Path) -> None:
    with SqliteStore(db_path) as store:
        conn = store._connection()  # the settings are per connection
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


# --- every store: values round-trip ---------------------------------------------------------


def test_reopening_keeps_the_data(store_factory: StoreFactory) -> None:
    first = store_factory()
    with first.write() as tx:
        tx.insert_request(a_request())
    first.close()
    for _ in range(3):
        store = store_factory()
        with store.read() as tx:
            assert tx.get_request(RequestId("r1")) == a_request()
        assert store.changes() == 1
        store.close()


def test_an_approval_of_a_missing_request_is_refused(store: Store) -> None:
    with pytest.raises(INTEGRITY_ERRORS), store.write() as tx:
        tx.add_approval(RequestId("missing"), Approval(UserName("bob"), T0, ""))


def test_a_request_round_trips_with_every_field(store: Store) -> None:
    active = a_request(
        state=RequestState.REVOKED,
        activated_at=T0 + timedelta(minutes=1),
        ends_at=T0 + timedelta(hours=4, minutes=1),
        closed_at=T0 + timedelta(hours=1),
        closed_by=UserName("erin"),
        close_reason="done",
    )
    with store.write() as tx:
        tx.insert_request(active)
    with store.read() as tx:
        assert tx.get_request(active.id) == active
        assert tx.get_request(RequestId("r2")) is None


def test_instants_are_stored_in_utc_microseconds_and_read_back_aware() -> None:
    paris = datetime(2026, 3, 1, 13, 0, 0, 1, tzinfo=timezone(timedelta(hours=1)))
    assert from_us(to_us(paris)) == paris
    assert from_us(to_us(paris)).tzinfo is UTC
    with pytest.raises(ValueError, match="naive"):
        to_us(datetime(2026, 3, 1))


def test_an_approver_is_recorded_once(store: Store) -> None:
    with store.write() as tx:
        tx.insert_request(a_request())
        assert tx.add_approval(RequestId("r1"), Approval(UserName("bob"), T0, "first"))
        assert not tx.add_approval(RequestId("r1"), Approval(UserName("bob"), T0, "again"))
        assert [a.comment for a in tx.approvals(RequestId("r1"))] == ["first"]


def test_active_grants_match_names_exactly(store: Store) -> None:
    verifier = make_verifier("pw", iterations=1)
    with store.write() as tx:
        tx.insert_request(
            a_request(state=RequestState.ACTIVE, activated_at=T0, ends_at=T0 + timedelta(hours=1))
        )
        tx.set_credential(RequestId("r1"), verifier, T0)
    with store.read() as tx:
        (grant,) = tx.active_grants(UserName("alice"), TargetName("prod"))
        assert (grant.verifier, grant.credential_issued_at) == (verifier, T0)
        for user, target in [("Alice", "prod"), ("alice", "Prod"), ("alice ", "prod")]:
            assert tx.active_grants(UserName(user), TargetName(target)) == ()


def test_names_sort_by_their_bytes_whatever_the_locale(store: Store) -> None:
    # SQLite's BINARY collation; PostgreSQL's "C", also in a database whose default is not.
    names = ["bob", "émile", "alice", "Zed", "Alice"]
    with store.write() as tx:
        tx.insert_request(a_request())
        for name in names:
            tx.add_approval(RequestId("r1"), Approval(UserName(name), T0, ""))
        ordered = [a.approver for a in tx.approvals(RequestId("r1"))]
    assert ordered == sorted(names, key=lambda n: n.encode()) == [
        "Alice", "Zed", "alice", "bob", "émile"
    ]  # fmt: skip


def test_a_schema_check_refuses_an_active_request_without_a_window(store: Store) -> None:
    with pytest.raises(INTEGRITY_ERRORS), store.write() as tx:
        tx.insert_request(a_request(state=RequestState.ACTIVE))


# --- every store: transactions and the change counter ---------------------------------------


def test_a_failed_transaction_leaves_nothing_behind(store: Store) -> None:
    def fail_midway() -> None:
        with store.write() as tx:
            tx.insert_request(a_request())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_midway()
    with store.read() as tx:
        assert tx.get_request(RequestId("r1")) is None
    assert store.changes() == 0


def test_the_counter_moves_once_per_committed_write(store: Store) -> None:
    with store.write() as tx:
        tx.insert_request(a_request("r1"))
        tx.insert_request(a_request("r2"))
    with store.write():
        pass  # nothing written: nothing to notice
    assert store.changes() == 1


def test_a_read_transaction_refuses_writes(store: Store) -> None:
    with pytest.raises(StoreError, match="read-only"), store.read() as tx:
        tx.insert_request(a_request())


def test_transactions_do_not_nest(store: Store) -> None:
    with store.write(), pytest.raises(StoreError, match="nested"), store.read():
        pass


def test_a_closed_store_is_refused(store_factory: StoreFactory) -> None:
    store = store_factory()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.changes()


def test_one_store_serves_many_threads(store: Store) -> None:
    errors: list[BaseException] = []

    def insert(n: int) -> None:
        try:
            with store.write() as tx:
                tx.insert_request(a_request(f"r{n}"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.changes() == 8


def test_due_requests_are_the_ended_active_and_the_stale_pending(store: Store) -> None:
    hour = timedelta(hours=1)
    with store.write() as tx:
        tx.insert_request(a_request("old-pending"))
        tx.insert_request(a_request("new-pending", created_at=T0 + hour))
        for id_, end in (("ended", T0 + hour), ("running", T0 + 3 * hour)):
            tx.insert_request(
                a_request(id_, state=RequestState.ACTIVE, activated_at=T0, ends_at=end)
            )
    with store.read() as tx:
        due = tx.due_requests(T0 + hour, hour)
    assert sorted(r.id for r in due) == ["ended", "old-pending"]


def test_a_token_round_trips_moves_no_counter_and_is_revoked_once(store: Store) -> None:
    token = TokenRecord("tok_1", UserName("erin"), bytes(range(32)), T0)
    with store.write() as tx:
        tx.insert_token(token)
        tx.touch_token("tok_1", T0 + timedelta(seconds=1))
    with store.write() as tx:
        assert tx.revoke_token("tok_1", T0 + timedelta(seconds=2))
        assert not tx.revoke_token("tok_1", T0 + timedelta(seconds=3))
        assert not tx.revoke_token("tok_2", T0)
    with store.read() as tx:
        found = tx.token_by_digest(bytes(range(32)))
        assert tx.token_by_digest(bytes(32)) is None
        assert tx.tokens() == (found,)
    assert found == replace(
        token, last_used_at=T0 + timedelta(seconds=1), revoked_at=T0 + timedelta(seconds=2)
    )
    assert store.changes() == 0  # a token changes no grant (store.py)
