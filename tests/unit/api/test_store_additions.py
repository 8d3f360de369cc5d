"""What the API added to the state store: migration 2 (tokens), listing requests, and the pure
visibility rules of `proxy/api/access.py`."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from proxy.api.access import (
    approver_scopes,
    may_end_session,
    may_see_request,
    may_see_session,
    visible_requests,
)
from proxy.grants.requests import RequestState
from proxy.grants.store import MAX_LIST_LIMIT, RequestQuery, SqliteStore
from proxy.grants.store_schema import MIGRATIONS, SCHEMA_VERSION, TokenRecord
from proxy.policy.models import UserName
from tests.fixtures.api import BILLING, ORDERS, RO, RW, ApiHarness, make_policy
from tests.fixtures.clock import FakeClock


def test_a_version_1_file_is_migrated_forward_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("PRAGMA application_id = 1885828964")
        conn.execute(
            "INSERT INTO requests VALUES ('r1', 'alice', 'orders', 'read-only', 1, 1, 'why', "
            "'pending', 5, NULL, NULL, NULL, NULL, NULL)"
        )
    with SqliteStore(path) as store, store.read() as tx:
        assert tx.tokens() == ()
        assert [r.id for r in tx.list_requests(RequestQuery(everything=True))] == ["r1"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert SCHEMA_VERSION == 5  # 3: the notification outbox; 4: single sign-on; 5: Slack


def test_tokens_round_trip_and_a_digest_is_unique(tmp_path: Path) -> None:
    clock = FakeClock()
    record = TokenRecord("tok_1", UserName("alice"), b"d" * 32, clock.now())
    with SqliteStore(tmp_path / "s.db") as store:
        with store.write() as tx:
            tx.insert_token(record)
        with store.read() as tx:
            assert tx.token_by_digest(b"d" * 32) == record
            assert tx.token_by_digest(b"e" * 32) is None
        with pytest.raises(sqlite3.IntegrityError), store.write() as tx:
            tx.insert_token(TokenRecord("tok_2", UserName("bob"), b"d" * 32, clock.now()))
        with pytest.raises(sqlite3.IntegrityError), store.write() as tx:
            tx.insert_token(TokenRecord("tok_3", UserName("bob"), b"short", clock.now()))
        assert store.changes() == 0  # token writes do not move the change counter


def test_listing_is_newest_first_by_state_by_scope_and_bounded(
    api: ApiHarness, clock: FakeClock
) -> None:
    ids = []
    for user, target in [("alice", "orders"), ("bob", "orders"), ("alice", "billing")]:
        ids.append(api.create(user, target=target).body["id"])
        clock.advance(1)
    a_orders, b_orders, a_billing = ids

    def listed(query: RequestQuery) -> list[str]:
        return [r.id for r in api.grants.list_requests(query)]

    assert listed(RequestQuery(everything=True)) == [a_billing, b_orders, a_orders]
    assert listed(RequestQuery(requester=UserName("bob"))) == [b_orders]
    assert listed(RequestQuery(scopes=frozenset({(BILLING, RO)}))) == [a_billing]
    both = RequestQuery(requester=UserName("bob"), scopes=frozenset({(BILLING, RO)}))
    assert listed(both) == [a_billing, b_orders]
    assert listed(RequestQuery()) == []  # nobody's
    assert listed(RequestQuery(everything=True, limit=2)) == [a_billing, b_orders]
    assert len(listed(RequestQuery(everything=True, limit=MAX_LIST_LIMIT + 5))) == 3
    api.act("carol", a_orders, "approve")
    assert listed(RequestQuery(RequestState.ACTIVE, everything=True)) == [a_orders]


def test_listing_applies_due_lapses_first(api: ApiHarness, clock: FakeClock) -> None:
    request_id = api.create().body["id"]
    clock.advance(timedelta(hours=2))
    (found,) = api.grants.list_requests(RequestQuery(everything=True))
    assert (found.id, found.state) == (request_id, RequestState.LAPSED)


def test_the_visibility_rules_as_a_table(api: ApiHarness) -> None:
    policy = make_policy()
    assert approver_scopes(policy, UserName("carol")) == {(ORDERS, RO), (ORDERS, RW)}
    assert approver_scopes(policy, UserName("frank")) == {(BILLING, RO)}
    assert approver_scopes(policy, UserName("erin")) == frozenset()
    assert visible_requests(policy, UserName("erin"), RequestQuery(limit=7)) == RequestQuery(
        everything=True, limit=7
    )
    request = api.grants.get(api.create("alice").body["id"])
    seers = {u for u in policy.users if may_see_request(policy, request, u)}
    assert seers == {"alice", "carol", "dave", "erin"}
    session = api.add_session("alice").info
    assert {u for u in policy.users if may_see_session(policy, session, u)} == seers
    assert {u for u in policy.users if may_end_session(policy, session, u)} == seers - {"alice"}
