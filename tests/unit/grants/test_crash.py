"""Crash safety: a writer killed with SIGKILL mid-transaction leaves a sound, consistent database.

A child process drives the real GrantService and also writes large multi-row transactions, and
prints the change counter after each commit. The parent kills it at a random moment after a few
commits, then checks that the file opens, `PRAGMA integrity_check` is ok, references hold, every
acknowledged commit survived, no transaction is half there, and the lifecycle's invariants hold.
Bounded: a few rounds, each a fraction of a second.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from proxy.grants.store import SqliteStore

ROOT = Path(__file__).resolve().parents[3]
ROUNDS = 3
BULK = 50  # requests written by one big transaction: it is all there or not at all

CHILD = f"""
import sys
from datetime import timedelta
from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import AccessRequest, RequestId, RequestState
from proxy.grants.store import SqliteStore
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import ALICE, BOB, DAVE, PolicyBox, make_policy, new_request

store = SqliteStore(sys.argv[1])
clock = FakeClock()
service = GrantService(store, clock, PolicyBox(make_policy()))
round_ = sys.argv[2]

def acknowledge():
    print(store.changes(), flush=True)

for n in range(10**6):
    request = new_request(service); acknowledge()
    service.approve(request.id, BOB); acknowledge()
    service.approve(request.id, DAVE); acknowledge()
    service.issue_credential(request.id, ALICE); acknowledge()
    if n % 3 == 0:
        service.revoke(request.id, BOB, "crash test"); acknowledge()
    with store.write() as tx:
        for i in range({BULK}):
            tx.insert_request(AccessRequest(
                RequestId(f"bulk-{{round_}}-{{n}}-{{i}}"), ALICE, request.target,
                request.access_level, timedelta(hours=1), timedelta(hours=1), "bulk",
                RequestState.PENDING, clock.now(),
            ))
    acknowledge()
    clock.advance(1)
"""


def run_and_kill(db_path: Path, round_: int, rng: random.Random) -> int:
    """Start the writer, kill -9 it after a random number of commits; the last acknowledged
    change count."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path), str(round_)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    printed: list[str] = []
    try:
        assert child.stdout is not None
        for _ in range(rng.randint(10, 40)):
            printed.append(child.stdout.readline())
            assert printed[-1], "the writer died on its own"
        time.sleep(rng.uniform(0, 0.02))  # land anywhere, often inside a transaction
    finally:
        child.kill()
        rest, _ = child.communicate(timeout=10)  # what it printed after we stopped reading
    assert child.returncode == -9
    return int([*printed, *rest.split()][-1])


def check_database(db_path: Path, acknowledged: int) -> None:
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []

        def scalar(sql: str) -> int:
            value: int = conn.execute(sql).fetchone()[0]
            return value

        counter = scalar("SELECT value FROM change_counter")
        # every acknowledged commit is there; at most one more committed before its print
        assert acknowledged <= counter <= acknowledged + 1
        assert scalar("SELECT count(*) FROM approvals a LEFT JOIN requests r "
                      "ON r.id = a.request_id WHERE r.id IS NULL") == 0  # fmt: skip
        assert scalar("SELECT count(*) FROM requests WHERE id LIKE 'bulk-%'") % BULK == 0
        # state = the last history row; an active request had its quorum of 2
        assert scalar("""SELECT count(*) FROM requests r WHERE state IS NOT (
            SELECT to_state FROM transitions t WHERE t.request_id = r.id ORDER BY seq DESC
            LIMIT 1) AND id NOT LIKE 'bulk-%'""") == 0  # fmt: skip
        assert scalar("""SELECT count(*) FROM requests r WHERE state = 'active' AND (
            SELECT count(*) FROM approvals a WHERE a.request_id = r.id) < 2""") == 0  # fmt: skip
        assert scalar("""SELECT count(*) FROM credentials c JOIN requests r
            ON r.id = c.request_id WHERE r.state <> 'active'""") == 0  # fmt: skip
    with SqliteStore(db_path) as store:
        assert store.changes() == counter


def test_a_killed_writer_leaves_a_sound_database(db_path: Path) -> None:
    rng = random.Random(20260105)
    for round_ in range(ROUNDS):
        acknowledged = run_and_kill(db_path, round_, rng)
        check_database(db_path, acknowledged)
