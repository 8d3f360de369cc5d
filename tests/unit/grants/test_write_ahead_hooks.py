"""The store's write-ahead hooks: the audit log records a write's transitions before its COMMIT.

`before_commit` raising rolls the transaction back (the action never takes effect, issue 22,
item 1); `on_commit` hears of it only after the COMMIT; `on_abort` when the records were written
but the COMMIT failed.
"""

from __future__ import annotations

import pytest

from proxy.grants.lifecycle import GrantService, NotAudited
from proxy.grants.requests import Action, Transition
from proxy.grants.store import RequestQuery, StoreTx
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import PolicyBox, StoreFactory, break_the_commit, new_request


class Hooks:
    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.before: list[list[Action]] = []
        self.committed: list[list[Action]] = []
        self.aborted: list[list[Action]] = []

    def before_commit(self, tx: StoreTx, transitions: list[Transition]) -> None:
        # The transaction's own rows are visible to the hook: records are built from them.
        assert all(tx.get_request(t.request_id) is not None for t in transitions)
        self.before.append([t.action for t in transitions])
        if self.refuse:
            raise NotAudited("the audit log cannot be written")

    def on_commit(self, transitions: list[Transition]) -> None:
        self.committed.append([t.action for t in transitions])

    def on_abort(self, transitions: list[Transition], exc: BaseException) -> None:
        self.aborted.append([t.action for t in transitions])


def service_with(
    store_factory: StoreFactory, hooks: Hooks, clock: FakeClock, policy: PolicyBox
) -> GrantService:
    store = store_factory(before_commit=hooks.before_commit, on_commit=hooks.on_commit,
                          on_abort=hooks.on_abort)  # fmt: skip
    return GrantService(store, clock, policy)


def test_a_refused_record_leaves_the_store_unchanged(
    store_factory: StoreFactory, clock: FakeClock, policy: PolicyBox
) -> None:
    hooks = Hooks(refuse=True)
    service = service_with(store_factory, hooks, clock, policy)
    with pytest.raises(NotAudited):
        new_request(service)
    assert service.list_requests(RequestQuery(everything=True)) == ()
    assert hooks.before == [[Action.CREATE]]
    assert hooks.committed == hooks.aborted == []  # refused before it was written: no outcome


def test_records_before_the_commit_then_the_commit_is_told(
    store_factory: StoreFactory, clock: FakeClock, policy: PolicyBox
) -> None:
    hooks = Hooks()
    service = service_with(store_factory, hooks, clock, policy)
    new_request(service)
    assert hooks.before == hooks.committed == [[Action.CREATE]]
    assert hooks.aborted == []


def test_a_failed_commit_after_the_records_is_told_as_aborted(
    store_factory: StoreFactory, clock: FakeClock, policy: PolicyBox
) -> None:
    hooks = Hooks()
    service = service_with(store_factory, hooks, clock, policy)
    original = hooks.before_commit

    def then_fail(tx: StoreTx, transitions: list[Transition]) -> None:
        original(tx, transitions)
        break_the_commit(tx)  # the records are written; now the COMMIT fails

    hooks.before_commit = then_fail  # type: ignore[method-assign]
    service._store._before_commit = then_fail  # type: ignore[attr-defined]
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the database says
        new_request(service)
    assert hooks.aborted == [[Action.CREATE]]
    assert hooks.committed == []
    assert service.list_requests(RequestQuery(everything=True)) == ()
