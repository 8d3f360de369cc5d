"""The session file of `pgwarden login` on its own: what it refuses to read, how it is written, and
when `fresh_session` refreshes (once, even when two commands want to at the same moment)."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from proxy.commands.session_file import (
    SessionEnded,
    SessionFileError,
    StoredSession,
    fresh_session,
    read_session,
    session_from_answer,
    write_session,
)

URL = "http://127.0.0.1:8080"
NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def session(
    ends_in: timedelta, refresh: str | None = "rt_1", token: str = "pgs_a"
) -> StoredSession:
    return StoredSession(URL, token, NOW + ends_in, "alice", ("engineers",), refresh)


def answer(token: str, ends_in: timedelta) -> dict[str, Any]:
    return {"session_token": token, "expires_at": (NOW + ends_in).isoformat(), "user": "alice",
            "groups": ["engineers"], "refresh_token": "rt_2"}  # fmt: skip


def test_written_atomically_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "pgwarden" / "session.json"
    write_session(path, session(timedelta(hours=1)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_session(path) == session(timedelta(hours=1))
    assert "rt_1" not in repr(read_session(path))  # secrets stay out of tracebacks and logs
    write_session(path, session(timedelta(hours=2), token="pgs_b"))
    again = read_session(path)
    assert again is not None
    assert again.session_token == "pgs_b"
    assert sorted(p.name for p in path.parent.iterdir()) == ["session.json"]


def test_a_missing_file_is_no_session(tmp_path: Path) -> None:
    assert read_session(tmp_path / "session.json") is None


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "session.json"
    write_session(path, session(timedelta(hours=1)))
    path.chmod(mode)
    with pytest.raises(SessionFileError, match=f"can be read by others \\(mode {mode:04o}\\)"):
        read_session(path)
    assert read_session(path, allow_exposed=True) is not None  # logout may still revoke it


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.json"
    write_session(real, session(timedelta(hours=1)))
    (tmp_path / "session.json").symlink_to(real)
    with pytest.raises(SessionFileError, match="symlink"):
        read_session(tmp_path / "session.json")


def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    write_session(path, session(timedelta(hours=1)))
    if os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    os.chown(path, 4242, 4242)
    with pytest.raises(SessionFileError, match="belongs to another user"):
        read_session(path)


@pytest.mark.parametrize(
    "content",
    ["not json", "[]", '{"version": 9}', '{"version": 1, "url": "x", "session_token": "pgw_x"}'],
)
def test_a_malformed_file_says_to_sign_in_again(tmp_path: Path, content: str) -> None:
    path = tmp_path / "session.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(SessionFileError, match=r"is not a pgwarden session .* pgwarden login"):
        read_session(path)


@pytest.mark.parametrize(
    ("change", "wanted"),
    [
        ({"session_token": "pgw_api_token"}, "no session_token"),
        ({"user": ""}, "no user"),
        ({"groups": "engineers"}, "groups is not a list"),
        ({"groups": ["a", 1]}, "groups is not a list"),
        ({"expires_at": "2026-03-02T15:00:00"}, "no time zone"),
        ({"expires_at": None}, "no expires_at"),
        ({"refresh_token": 7}, "refresh_token is not text"),
    ],
)
def test_a_malformed_session_answer_is_refused(change: Mapping[str, Any], wanted: str) -> None:
    with pytest.raises(ValueError, match=wanted):
        session_from_answer({**answer("pgs_x", timedelta(hours=1)), **change}, URL)


def test_fresh_session_refreshes_only_near_the_end(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    write_session(path, session(timedelta(minutes=5)))
    asked: list[str] = []

    def refresh(token: str) -> Mapping[str, Any]:
        asked.append(token)
        return answer("pgs_new", timedelta(hours=1))

    assert fresh_session(path, URL, refresh, lambda: NOW).session_token == "pgs_a"
    assert asked == []
    later = NOW + timedelta(minutes=4, seconds=30)  # within the minute's margin
    assert fresh_session(path, URL, refresh, lambda: later).session_token == "pgs_new"
    assert asked == ["rt_1"]
    stored = read_session(path)
    assert stored is not None
    assert (stored.session_token, stored.refresh_token) == ("pgs_new", "rt_2")


def test_an_ended_session_without_refresh_token_must_sign_in_again(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    write_session(path, session(-timedelta(minutes=1), refresh=None))

    def refresh(token: str) -> Mapping[str, Any]:
        raise AssertionError("nothing to refresh with")

    with pytest.raises(SessionEnded, match="sign in again with: pgwarden login"):
        fresh_session(path, URL, refresh, lambda: NOW)


def test_two_commands_refreshing_at_once_use_the_refresh_token_once(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    write_session(path, session(timedelta(seconds=10)))
    asked: list[str] = []
    inside = threading.Barrier(2, timeout=10)
    results: list[str] = []

    def refresh(token: str) -> Mapping[str, Any]:
        asked.append(token)
        return answer("pgs_new", timedelta(hours=1))

    def command() -> None:
        inside.wait()
        results.append(fresh_session(path, URL, refresh, lambda: NOW).session_token)

    threads = [threading.Thread(target=command) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert asked == ["rt_1"]  # rotated at the provider: a second use would end the sign-in
    assert results == ["pgs_new", "pgs_new"]


def test_the_stored_document_names_its_version_and_server(tmp_path: Path) -> None:
    path = tmp_path / "session.json"
    write_session(path, session(timedelta(hours=1)))
    document = json.loads(path.read_text())
    assert document["version"] == 1
    assert document["url"] == URL
    assert document["expires_at"] == (NOW + timedelta(hours=1)).isoformat()
