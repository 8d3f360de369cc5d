"""The state store watches itself: a deleted or replaced file, and writes that fail.

A file gone (deleted, or another put in its place) refuses writes and logins until restart, and
says so once, naming the path; reads go on against the file as it was, in every thread. A failed
operation (read-only here, with `PRAGMA query_only`; disk full is tested on a real tmpfs in
tests/integration/test_state_store_faults.py) is a clear error that clears itself once a write
works again. Errors that are about a statement, not the file, stay what they were.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import Approval, RequestId, RequestState
from proxy.grants.store import SqliteStore, StateStoreUnavailable, StoreError
from proxy.grants.store_watch import LOGIN_REFUSED, Problem, identity_of, problem_of
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import ALICE, BOB, PROD, new_request, request_in_state

T = TypeVar("T")


def in_new_thread(work: Callable[[], T]) -> T:
    """`work()` in a thread that has no connection yet (API and store threads start so)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    if errors:
        raise errors[0]
    return result[0]


def delete(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- the file gone ----------------------------------------------------------------------------


def test_a_deleted_file_refuses_writes_and_logins_and_says_so_once(
    service: GrantService, store: SqliteStore, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    active = request_in_state(service, FakeClock(), RequestState.ACTIVE)
    service.issue_credential(active.id, ALICE)
    delete(db_path)
    for _ in range(3):
        with pytest.raises(StateStoreUnavailable) as refused:
            new_request(service)
        assert refused.value.problem is Problem.DELETED
    assert str(refused.value) == (
        f"the state store {db_path} was deleted while pgwarden ran; approvals, credentials and "
        "logins are refused until pgwarden is restarted (put the file back first)"
    )
    # A login is checked against a history only this process still holds: refused, 57P03,
    # and the client is not told the path.
    with pytest.raises(StateStoreUnavailable) as login:
        service.login_decision(ALICE, PROD, FakeClock().now())
    assert (login.value.sqlstate, login.value.message) == ("57P03", LOGIN_REFUSED)
    assert store.problem() is not None
    assert store.watch.errors() == {Problem.DELETED: 1}
    (logged,) = errors_logged(caplog)
    assert logged.startswith(f"the state store {db_path} was deleted while pgwarden ran")
    assert not db_path.exists()  # nothing made it anew


def test_reads_go_on_from_the_file_as_it_was_in_every_thread(
    service: GrantService, store: SqliteStore, db_path: Path
) -> None:
    request = new_request(service)
    changes = store.changes()
    delete(db_path)
    assert in_new_thread(lambda: service.get(request.id)) == request
    assert in_new_thread(store.changes) == changes
    assert service.get(request.id) == request
    assert not db_path.exists()  # a thread's first connection never creates the file


def test_a_replaced_file_is_never_read_and_never_trusted_again(
    service: GrantService, store: SqliteStore, db_path: Path, tmp_path: Path
) -> None:
    request = new_request(service)
    other = tmp_path / "other.db"
    SqliteStore(other).close()  # an empty store, moved into place (a backup restored live)
    os.replace(other, db_path)
    with pytest.raises(StateStoreUnavailable, match="was replaced by another file"):
        new_request(service)
    # Every thread still reads this process's history, never the file now at the path.
    assert in_new_thread(lambda: service.get(request.id)) == request
    # Putting a file back changes nothing: this process's history is not in it.
    delete(db_path)
    SqliteStore(db_path).close()
    problem = store.problem()
    assert problem is not None
    assert problem.problem is Problem.REPLACED


def test_the_file_gone_is_noticed_without_traffic(store: SqliteStore, db_path: Path) -> None:
    assert store.check() is None
    delete(db_path)
    problem = store.check()  # what housekeeping does once a second
    assert problem is not None
    assert problem.summary == f"the state store {db_path} was deleted while pgwarden ran"


# --- failed operations -------------------------------------------------------------------------


def test_a_failed_write_is_a_clear_error_and_clears_once_writes_work(
    service: GrantService, store: SqliteStore, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    request = new_request(service)
    # This test's thread's connection, read-only: writes fail with SQLITE_READONLY.
    store._connection().execute("PRAGMA query_only = ON")
    with pytest.raises(StateStoreUnavailable) as refused:
        service.approve(request.id, BOB)
    assert str(refused.value) == (
        f"the state store {db_path} cannot be written (read-only); approvals and credentials "
        "are refused until it can"
    )
    assert isinstance(refused.value.__cause__, sqlite3.OperationalError)
    # Reads and logins go on: the file is what it was, only writes fail.
    assert service.get(request.id) == request
    service.login_decision(ALICE, PROD, FakeClock().now())
    assert store.check() is not None  # the retried write fails too
    assert store.watch.errors() == {Problem.READ_ONLY: 2}
    assert len(errors_logged(caplog)) == 1  # the first time; repeats are DEBUG
    store._connection().execute("PRAGMA query_only = OFF")
    assert store.check() is None  # recovered with no caller's write
    assert any("can be written again" in r.getMessage() for r in caplog.records)
    assert new_request(service).state is RequestState.PENDING


def test_a_constraint_error_is_the_callers_not_the_stores(store: SqliteStore) -> None:
    with pytest.raises(sqlite3.IntegrityError), store.write() as tx:
        tx.add_approval(RequestId("nope"), Approval(BOB, FakeClock().now(), ""))
    assert store.problem() is None


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        (13, Problem.DISK_FULL),  # SQLITE_FULL
        (10, Problem.IO_ERROR),  # SQLITE_IOERR
        (10 | (4 << 8), Problem.IO_ERROR),  # SQLITE_IOERR_FSYNC: extended codes keep the primary
        (8, Problem.READ_ONLY),  # SQLITE_READONLY
        (5, Problem.BUSY),  # SQLITE_BUSY, past the busy timeout
        (11, Problem.CORRUPT),  # SQLITE_CORRUPT
        (26, Problem.CORRUPT),  # SQLITE_NOTADB
        (1, None),  # SQLITE_ERROR: a statement's own error
        (21, None),  # SQLITE_MISUSE
    ],
)
def test_sqlite_result_codes_name_the_problem(code: int, problem: Problem | None) -> None:
    error = sqlite3.OperationalError("x")
    error.sqlite_errorcode = code
    assert problem_of(error) is problem


# --- opening ----------------------------------------------------------------------------------


def test_a_worker_opens_only_the_file_its_primary_opened(db_path: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        SqliteStore(db_path, create=False)
    assert not db_path.exists()
    with SqliteStore(db_path) as primary:
        SqliteStore(db_path, create=False, expect=primary.watch.identity).close()
        other = tmp_path / "other.db"
        SqliteStore(other).close()
        os.replace(other, db_path)
        with pytest.raises(StoreError, match="is not the state file pgwarden's primary process"):
            SqliteStore(db_path, create=False, expect=primary.watch.identity)
        assert identity_of(db_path) != primary.watch.identity
