"""`pgwarden store migrate`'s source: the SQLite state file, read once and never written.

No PostgreSQL here (tests/integration/state_postgres/test_store_migrate.py copies into one).
A file that is missing, no database, empty, another application's, of a newer schema, or with a
column the copy does not know is refused with a line that names it, and is left byte for byte
as it was; an older schema is brought up to date in memory only; a file a server still has open
is read with what its WAL holds; `--from` and `--to` take only `sqlite:PATH` and `postgres`.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.cli import build_parser
from proxy.grants.store import SqliteStore
from proxy.grants.store_copy import read_snapshot
from proxy.grants.store_schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from proxy.grants.store_watch import StoreError

REQUEST = (
    "INSERT INTO requests VALUES ('r1', 'alice', 'prod', 'read-only', 3600000000, 3600000000, "
    "'why', 'pending', 0, NULL, NULL, NULL, NULL, NULL)"
)


def sqlite_file(path: Path, *statements: str) -> Path:
    with sqlite3.connect(path) as conn:
        for statement in statements:
            conn.execute(statement)
    return path


def schema_v1(path: Path) -> Path:
    """A state file as pgwarden's first schema left it, with one request."""
    return sqlite_file(
        path, *MIGRATIONS[0], REQUEST,
        "PRAGMA user_version = 1", f"PRAGMA application_id = {APPLICATION_ID}",
    )  # fmt: skip


def current(path: Path, *more: str) -> Path:
    SqliteStore(path).close()
    return sqlite_file(path, *more)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


FOREIGN = ("PRAGMA application_id = 42", "PRAGMA user_version = 1")  # another app's numbers


def made(path: Path, how: Callable[[Path], object]) -> Path:
    how(path)
    return path


REFUSED: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda p: p, "does not exist; name pgwarden's SQLite state file"),
    "a directory": (lambda p: made(p, Path.mkdir), "is not a file"),
    "no database": (
        lambda p: made(p, lambda p: p.write_bytes(b"not sqlite at all " * 100)),
        "is not a pgwarden state file (file is not a database)",
    ),
    "empty": (lambda p: made(p, Path.touch), "is not a pgwarden state file (it holds no pgwarden"),
    "another application's": (
        lambda p: sqlite_file(p, "CREATE TABLE t (x)", *FOREIGN),
        "is not a pgwarden state database (application_id 42)",
    ),
    "unversioned tables": (
        lambda p: sqlite_file(p, "CREATE TABLE requests (id TEXT)"),
        "it holds no pgwarden schema",
    ),
    "newer": (
        lambda p: current(p, f"PRAGMA user_version = {SCHEMA_VERSION + 1}"),
        "newer than this pgwarden supports",
    ),
    "an unknown column": (
        lambda p: current(p, "ALTER TABLE requests ADD COLUMN ticket TEXT"),
        "holds columns the copy does not know (requests.ticket) or lacks some it copies (none)",
    ),
}


@pytest.mark.parametrize("kind", REFUSED)
def test_a_file_that_is_not_a_usable_state_file_is_refused_and_left_as_it_was(
    kind: str, tmp_path: Path
) -> None:
    make, expected = REFUSED[kind]
    path = make(tmp_path / "state.db")
    before = sorted(tmp_path.iterdir()), path.is_file() and digest(path)
    with pytest.raises(StoreError) as refused:
        read_snapshot(path)
    assert refused.value.message.startswith(str(path))
    assert expected in refused.value.message
    assert (sorted(tmp_path.iterdir()), path.is_file() and digest(path)) == before


def test_a_file_this_user_cannot_read_is_refused_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = current(tmp_path / "state.db")
    monkeypatch.setattr(os, "access", lambda *args: False)  # we run as root: it reads anything
    with pytest.raises(StoreError, match=r"cannot be read by this user \(uid \d+\); run this as"):
        read_snapshot(path)


def test_an_older_schema_is_brought_up_to_date_in_memory_only(tmp_path: Path) -> None:
    path = schema_v1(tmp_path / "state.db")
    before = digest(path)
    snapshot = read_snapshot(path)
    try:
        assert (snapshot.version, snapshot.wal) == (1, False)
        assert snapshot.counts()["requests"] == 1
        assert snapshot.counts()["api_tokens"] == 0  # a table of schema 2, made in the copy
    finally:
        snapshot.close()
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]  # no -wal, no -shm


def test_a_file_a_server_still_has_open_is_read_with_its_wal(tmp_path: Path) -> None:
    path = current(tmp_path / "state.db")
    with SqliteStore(path) as open_store, sqlite3.connect(path) as writer:
        writer.execute(REQUEST)  # committed into the WAL, not yet checkpointed into the file
        writer.commit()
        snapshot = read_snapshot(path)
        try:
            assert (snapshot.version, snapshot.wal) == (SCHEMA_VERSION, True)
            assert snapshot.counts()["requests"] == 1
        finally:
            snapshot.close()
        assert open_store.changes() == 0  # the server's store is none the worse


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--from", "state.db", "--to", "postgres"], "argument --from: takes sqlite:PATH"),
        (["--from", "sqlite:", "--to", "postgres"], "argument --from: takes sqlite:PATH"),
        (["--from", "sqlite:state.db", "--to", "sqlite:other.db"], "argument --to: takes postgres"),
        (["--to", "postgres"], "the following arguments are required: --from"),
    ],
)
def test_from_and_to_take_only_sqlite_and_postgres(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["store", "migrate", *argv])
    assert exited.value.code == 2
    assert expected in capsys.readouterr().err
