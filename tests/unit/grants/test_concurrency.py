"""Concurrent writers (SECURITY.md row 43): each approver has its own connection to one store.

Threads approve at once through several stores opened on the same state (`store_factory`:
for SQLite separate handles on the file, as separate processes would have; for PostgreSQL
separate pools, as separate servers would have: tests/integration/state_postgres runs these
again), each thread on its own connection; one test uses real processes (SQLite's). Whatever
the interleaving, the quorum is exact, the request is activated once, no approval is lost, and
the requester never counts.
"""

from __future__ import annotations

import contextlib
import pickle
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.grants.lifecycle import GrantService, LifecycleError
from proxy.grants.requests import AccessRequest, Action, RequestId, RequestState
from proxy.grants.rules import NotPermitted
from proxy.grants.store import Store
from proxy.policy.models import Policy, UserName
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import ALICE, GROUPS, PolicyBox, StoreFactory, make_policy, new_request

ROOT = Path(__file__).resolve().parents[3]
APPROVERS = [UserName(f"approver{n:02}") for n in range(50)]
STORES = 8  # stores the racing threads share, round robin: "servers" (or processes) at once


def crowd_policy(required: int) -> Policy:
    return make_policy(required=required, users={**GROUPS, **dict.fromkeys(APPROVERS, ("dba",))})


def race(
    stores: list[Store],
    clock: FakeClock,
    policy: PolicyBox,
    calls: list[Callable[[GrantService], object]],
) -> list[object]:
    """Run each call in its own thread, on `stores` round robin, all released at once; return
    each call's result or the exception it raised."""
    results: list[object] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(index: int) -> None:
        service = GrantService(stores[index % len(stores)], clock, policy)
        barrier.wait()
        try:
            results[index] = calls[index](service)
        except Exception as exc:  # the test inspects it
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def approve_call(request_id: RequestId, who: UserName) -> Callable[[GrantService], object]:
    return lambda service: service.approve(request_id, who)


def cancel_call(request_id: RequestId) -> Callable[[GrantService], object]:
    return lambda service: service.cancel(request_id, ALICE)


def count(db_path: Path, sql: str, *params: object) -> int:
    with sqlite3.connect(db_path) as conn:
        value: int = conn.execute(sql, params).fetchone()[0]
    return value


def approvers(store: Store, request_id: RequestId) -> list[UserName]:
    with store.read() as tx:
        return [approval.approver for approval in tx.approvals(request_id)]


def activations(store: Store, request_id: RequestId) -> int:
    with store.read() as tx:
        return sum(1 for t in tx.history(request_id) if t.action is Action.ACTIVATE)


@pytest.mark.parametrize("required", [50, 5])
def test_fifty_concurrent_approvers_reach_exactly_the_quorum(
    store_factory: StoreFactory, clock: FakeClock, policy: PolicyBox, required: int
) -> None:
    policy.current = crowd_policy(required)
    stores = [store_factory() for _ in range(STORES)]
    store, service = stores[0], GrantService(stores[0], clock, policy)
    request = new_request(service)
    calls = [approve_call(request.id, who) for who in [*APPROVERS, ALICE]]
    results = race(stores, clock, policy, calls)

    assert isinstance(results[-1], NotPermitted | LifecycleError)  # the requester never counts
    approved = [r for r in results[:-1] if isinstance(r, AccessRequest)]
    refused = [r for r in results[:-1] if isinstance(r, LifecycleError)]
    assert (len(approved), len(refused)) == (required, 50 - required)
    recorded = approvers(store, request.id)
    assert len(recorded) == len(set(recorded)) == required  # none lost, none twice
    assert ALICE not in recorded
    assert activations(store, request.id) == 1
    final = service.get(request.id)
    assert final.state is RequestState.ACTIVE
    assert sum(1 for r in approved if r.state is RequestState.ACTIVE) == 1  # one activator


def test_approve_racing_cancel_leaves_one_consistent_outcome(
    store_factory: StoreFactory,
    store: Store,
    clock: FakeClock,
    service: GrantService,
    policy: PolicyBox,
) -> None:
    policy.current = crowd_policy(1)
    outcomes = set()
    racers = [store_factory(), store_factory()]  # two "servers", for twenty races
    for _ in range(20):
        request = new_request(service)
        approve, cancel = race(
            racers, clock, policy,
            [approve_call(request.id, APPROVERS[0]), cancel_call(request.id)],
        )  # fmt: skip
        final = service.get(request.id)
        history = service.history(request.id)
        assert history[-1].to_state is final.state
        if final.state is RequestState.ACTIVE:
            assert isinstance(cancel, LifecycleError)
            assert activations(store, request.id) == 1
        else:
            assert final.state is RequestState.CANCELLED
            assert isinstance(approve, LifecycleError)
            assert service.approvals(request.id) == ()
        assert sum(1 for t in history if t.from_state is not t.to_state) == 2  # create + 1 end
        outcomes.add(final.state)
    assert outcomes <= {RequestState.ACTIVE, RequestState.CANCELLED}


# One approver in its own interpreter, with its own connection: it gets ready, says so, waits for
# the parent's "go" (so that every approver starts at the same moment), approves, prints the state.
# The policy comes pickled (hex) in its arguments: the child imports proxy's grants and no more.
APPROVER = """
import pickle, sys
from proxy.grants.lifecycle import GrantService, LifecycleError
from proxy.grants.requests import RequestId
from proxy.grants.store import SqliteStore
from proxy.policy.models import UserName
from tests.fixtures.clock import FakeClock

db_path, request_id, approver, policy = sys.argv[1:]
current = pickle.loads(bytes.fromhex(policy))
with SqliteStore(db_path) as store:
    service = GrantService(store, FakeClock(), lambda: current)
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        print(service.approve(RequestId(request_id), UserName(approver)).state.value)
    except LifecycleError:
        print("refused")
"""


def approve_in_processes(
    db_path: Path, request_id: str, approvers: list[UserName], policy: Policy
) -> list[str]:
    """Start one approver process each, let them all approve at once; what each printed."""
    pickled = pickle.dumps(policy).hex()
    with contextlib.ExitStack() as stack:
        children = [
            stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", APPROVER, str(db_path), request_id, who, pickled],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            for who in approvers
        ]
        stack.callback(lambda: [child.kill() for child in children if child.poll() is None])
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        return [child.communicate(timeout=60)[0].strip() for child in children]


def test_concurrent_approvers_in_separate_processes(
    db_path: Path, store: Store, service: GrantService, policy: PolicyBox
) -> None:
    required, workers = 6, 8
    policy.current = crowd_policy(required)
    request = new_request(service)
    states = approve_in_processes(db_path, request.id, APPROVERS[:workers], policy.current)
    assert states.count("refused") == workers - required
    assert states.count("active") == 1
    assert count(db_path, "SELECT count(*) FROM approvals") == required
    assert activations(store, request.id) == 1
