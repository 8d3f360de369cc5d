"""The state store watches itself: is its file still the one it opened, and do writes land?

Two kinds of trouble, handled differently:

- **The file is gone** — deleted, or replaced by another file (`mv backup.db state.db`). Found by
  comparing the path's (st_dev, st_ino) with the file opened at start: before every transaction,
  after every failure, and once a second from housekeeping, so that `/readyz` notices with no
  traffic. SQLite keeps writing into a deleted file without a word, and a restart would then
  read another file (or none), so from then on the store refuses writes and logins until
  pgwarden is restarted, however the path looks later: a file put back is not the one whose
  history this process holds. Other reads go on against the file as it was, through the
  connection opened at start: the enforcer still sees the revocations stored before, and the
  API still knows its tokens, so `pgwarden sessions` and `pgwarden kill` work.
- **An operation failed** — disk full, I/O error, a read-only file system, the lock held by
  another process past the busy timeout, a damaged file. The store says so instead of raising
  `sqlite3.OperationalError`, and recovers by itself: the next write that succeeds (housekeeping
  retries one a second, `SqliteStore.check`) clears a write failure.

Either way the caller gets `StateStoreUnavailable`: one typed error, whose `message` is what a
Postgres client may be told (57P03, no path) and whose `explanation` is what an operator needs
(the path, what is wrong, what is refused). The first failure of a kind is logged as an ERROR
naming the path, repeats at DEBUG, a recovery as a WARNING; every failure is counted by kind
(`errors`, published as `pgwarden_state_store_errors_total{kind}`).

That bookkeeping is `ProblemLog`, which the PostgreSQL store (`pg_store.py`) shares: it names its
database (host, port, database, schema; never the password) where SQLite names its file, and
adds the problems of a store across the network (`unreachable`, `denied`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from enum import StrEnum
from pathlib import Path
from typing import Final, NamedTuple

from proxy.errors import PgwardenError

log = logging.getLogger(__name__)


class StoreError(PgwardenError):
    """The state store cannot be used (wrong file, newer schema, misuse)."""


class Problem(StrEnum):
    """What is wrong with the state store; the `kind` label of its error counter."""

    DELETED = "deleted"
    REPLACED = "replaced"
    DISK_FULL = "disk_full"
    IO_ERROR = "io_error"
    READ_ONLY = "read_only"
    BUSY = "busy"
    CORRUPT = "corrupt"
    UNREACHABLE = "unreachable"  # PostgreSQL: no connection (refused, lost, timed out, shut down)
    DENIED = "denied"  # PostgreSQL: the state role lacks a privilege (a REVOKE, a wrong role)

    @property
    def lasting(self) -> bool:
        """Held until restart: this process's history is no longer what the path names."""
        return self in (Problem.DELETED, Problem.REPLACED)


# SQLite's primary result codes (https://sqlite.org/rescode.html) that mean the file cannot be
# used, by problem. Others (a constraint, misuse) are about the statement, not the file: they
# stay sqlite3 errors, as before.
_CODES: Final = {
    13: Problem.DISK_FULL,  # SQLITE_FULL (also ENOSPC while writing)
    10: Problem.IO_ERROR,  # SQLITE_IOERR and its extended codes (a failed write, fsync, read)
    14: Problem.IO_ERROR,  # SQLITE_CANTOPEN
    8: Problem.READ_ONLY,  # SQLITE_READONLY (a read-only mount, a moved file)
    3: Problem.READ_ONLY,  # SQLITE_PERM
    5: Problem.BUSY,  # SQLITE_BUSY: still locked after the busy timeout
    6: Problem.BUSY,  # SQLITE_LOCKED
    11: Problem.CORRUPT,  # SQLITE_CORRUPT
    26: Problem.CORRUPT,  # SQLITE_NOTADB
}
_WHAT: Final = {
    Problem.DISK_FULL: "disk full",
    Problem.IO_ERROR: "I/O error",
    Problem.READ_ONLY: "read-only",
    Problem.BUSY: "locked by another process",
    Problem.CORRUPT: "the file is damaged",
    Problem.DENIED: "permission denied",
}
# What a Postgres client is told. No path: it has not logged in, and cannot act on one.
LOGIN_REFUSED: Final = (
    "pgwarden: logins are refused: pgwarden cannot use its state store; "
    "tell pgwarden's administrator"
)


class StateStoreUnavailable(StoreError):
    """The state store cannot do what was asked: `problem` says why, `explanation` says it all.

    SQLSTATE 57P03 (cannot_connect_now) is what PostgreSQL sends when it is up but refuses
    connections; libpq's `PQping` reads it as "rejecting", not as a wrong password."""

    sqlstate = "57P03"

    def __init__(
        self, path: Path | str, problem: Problem, *, writing: bool, login_grace: float = 0.0
    ) -> None:
        # `path`: the SQLite file, or the PostgreSQL database as `PostgresStore.where` names it.
        # `login_grace`: how long a replica's logins go on from memory (`state.max_staleness`).
        self.path, self.problem, self.writing = path, problem, writing
        self.login_grace = login_grace
        super().__init__(LOGIN_REFUSED, detail=self.summary)

    @property
    def summary(self) -> str:
        """The state store, its path and what is wrong: how every message about it begins."""
        if self.problem is Problem.DELETED:
            return f"the state store {self.path} was deleted while pgwarden ran"
        if self.problem is Problem.REPLACED:
            return f"the state store {self.path} was replaced by another file while pgwarden ran"
        if self.problem is Problem.UNREACHABLE:
            return f"the state store {self.path} cannot be reached"
        verb = "written" if self.writing else "read"
        return f"the state store {self.path} cannot be {verb} ({_WHAT[self.problem]})"

    @property
    def explanation(self) -> str:
        """`summary`, then what is refused until when (for the API and the log)."""
        if self.problem.lasting:
            return (
                f"{self.summary}; approvals, credentials and logins are refused until pgwarden "
                "is restarted (put the file back first)"
            )
        if self.problem is Problem.UNREACHABLE and self.login_grace > 0:
            return (
                f"{self.summary}; approvals and credentials are refused until it answers "
                f"(logins go on from what this server last read, for at most "
                f"{self.login_grace:.0f} s: state.max_staleness)"
            )
        if self.problem is Problem.UNREACHABLE:  # nothing can be read either
            return f"{self.summary}; approvals, credentials and logins are refused until it answers"
        if self.writing:
            return f"{self.summary}; approvals and credentials are refused until it can"
        return f"{self.summary}; approvals, credentials and logins are refused until it can"

    def __str__(self) -> str:
        return self.explanation


class FileIdentity(NamedTuple):
    device: int
    inode: int


def identity_of(path: Path) -> FileIdentity:
    """The file `path` names now (OSError if none)."""
    stat = os.stat(path)
    return FileIdentity(stat.st_dev, stat.st_ino)


def problem_of(exc: sqlite3.Error) -> Problem | None:
    """The problem a sqlite3 error reports about the file, or None if it is not about the file."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int) or isinstance(exc, sqlite3.IntegrityError):
        return None
    return _CODES.get(code & 0xFF)  # the primary code: extended codes add bits above it


class ProblemLog:
    """The problem in force and the errors counted, of one store (`where`: its file, or its
    database). Thread-safe: every thread of every store operation reports here. Each call gets an
    error of its own (one instance raised in many threads would pile up their tracebacks)."""

    def __init__(self, where: Path | str, *, login_grace: float = 0.0) -> None:
        self.path, self._login_grace = where, login_grace
        self._lock = threading.Lock()
        self._state: tuple[Problem, bool] | None = None  # (problem, while writing)
        self._errors: dict[Problem, int] = {}

    @property
    def problem(self) -> StateStoreUnavailable | None:
        state = self._state
        return None if state is None else self._error(state)

    def errors(self) -> dict[Problem, int]:
        """Failures so far, by problem (a gone file counts once, when it is noticed)."""
        with self._lock:
            return dict(self._errors)

    def succeeded(self, *, writing: bool) -> None:
        """An operation worked: clear a failure it proves over (a read proves nothing of writes)."""
        state = self._state
        if state is None or state[0].lasting or (state[1] and not writing):
            return
        with self._lock:
            if self._state != state:
                return  # another thread cleared or changed it meanwhile
            self._state = None
        verb = "written" if state[1] else "read"
        log.warning("the state store %s can be %s again", self.path, verb)

    def report(
        self, problem: Problem, *, writing: bool, cause: BaseException | None = None
    ) -> StateStoreUnavailable:
        """Put `problem` in force (a lasting one stays): counted, logged once, and returned."""
        state = (problem, writing)
        with self._lock:
            current = self._state
            if current is not None and current[0].lasting:
                return self._error(current)  # noticed already: counted and logged once
            self._errors[problem] = self._errors.get(problem, 0) + 1
            self._state = state
        error = self._error(state)
        why = f" ({cause})" if cause is not None else ""
        if current != state:
            log.error("%s%s", error.explanation, why)
        else:
            log.debug("%s%s", error.summary, why)
        return error

    def _error(self, state: tuple[Problem, bool]) -> StateStoreUnavailable:
        return StateStoreUnavailable(
            self.path, state[0], writing=state[1], login_grace=self._login_grace
        )


class StoreWatch(ProblemLog):
    """`ProblemLog` for a SQLite file, plus the file's identity at open (`gone`)."""

    def __init__(self, path: Path, identity: FileIdentity) -> None:
        super().__init__(path)
        self.file, self.identity = path, identity

    def gone(self) -> StateStoreUnavailable | None:
        """The lasting problem, if the file is (or was ever) no longer the one opened."""
        state = self._state
        if state is not None and state[0].lasting:
            return self._error(state)
        try:
            now = identity_of(self.file)
        except FileNotFoundError:
            return self.report(Problem.DELETED, writing=True)
        except OSError:
            return None  # cannot tell (a directory we may not search): the operation will say
        if now != self.identity:
            return self.report(Problem.REPLACED, writing=True)
        return None

    def failed(self, exc: sqlite3.Error, *, writing: bool) -> StateStoreUnavailable | None:
        """What a failed operation means, or None when `exc` is not about the file."""
        gone = self.gone()  # first: a file that went away explains any failure after it
        if gone is not None:
            return gone
        problem = problem_of(exc)
        if problem is None:
            return None
        return self.report(problem, writing=writing, cause=exc)
