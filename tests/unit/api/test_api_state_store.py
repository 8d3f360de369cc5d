"""The API when the state store cannot be used: a clear 503 naming the store and its path,
/readyz saying why, and the emergency path — `pgwarden sessions` and `pgwarden kill` — still open,
with a refused revocation pointing at it.

Two conditions: the state file deleted under the server (lasting until restart), and writes
failing (every connection made read-only: a write failure like disk full, which the real-disk
test in tests/integration/test_state_store_faults.py produces on a tmpfs).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from proxy.api.server import store_check
from tests.fixtures.api import PEOPLE, ApiHarness


def delete_state(api: ApiHarness) -> Path:
    for user in PEOPLE:
        api.token(user)  # made while the file is there
    path = api.store.path
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    return path


def make_read_only(api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection of the API's store refuses writes (SQLITE_READONLY) from now on."""
    store = api.store
    for user in PEOPLE:
        api.token(user)  # made while writes work
    connect = store._connect

    def read_only_connect(mode: str) -> sqlite3.Connection:
        conn = connect(mode)
        conn.execute("PRAGMA query_only = ON")
        return conn

    monkeypatch.setattr(store, "_connect", read_only_connect)
    for conn in list(store._connections):
        conn.execute("PRAGMA query_only = ON")


@pytest.fixture
def read_only(api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    make_read_only(api, monkeypatch)


def test_a_write_refused_is_a_503_naming_the_store_and_what_is_refused(
    api: ApiHarness, read_only: None
) -> None:
    reply = api.create("alice")
    assert (reply.status, reply.code) == (503, "unavailable")
    assert reply.message == (
        f"the state store {api.store.path} cannot be written (read-only); approvals and "
        "credentials are refused until it can"
    )


def test_readyz_says_what_is_wrong_with_the_store(api: ApiHarness) -> None:
    api.context.readiness_checks.append(store_check(api.store))
    assert api.call("GET", "/readyz").status == 200
    path = delete_state(api)
    reply = api.call("GET", "/readyz")
    assert reply.status == 503
    assert reply.body["problems"] == [
        f"the state store {path} was deleted while pgwarden ran; approvals, credentials and "
        "logins are refused until pgwarden is restarted (put the file back first)"
    ]


def test_with_the_file_gone_approvals_are_refused_but_the_api_still_answers_who_you_are(
    api: ApiHarness,
) -> None:
    request_id = str(api.create("alice").body["id"])
    delete_state(api)
    reply = api.act("carol", request_id, "approve")
    assert (reply.status, reply.code) == (503, "unavailable")
    assert "was deleted while pgwarden ran" in reply.message
    # Tokens and requests are read from the file as it was: people can still see what is going on.
    shown = api.call("GET", f"/api/v1/requests/{request_id}", user="carol")
    assert (shown.status, shown.body["state"]) == (200, "pending")


@pytest.mark.parametrize("gone", [True, False], ids=["file deleted", "writes failing"])
def test_a_refused_revocation_says_how_to_end_the_sessions_now_and_kill_does(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, gone: bool
) -> None:
    request_id = api.active_request("alice")
    session = api.add_session("alice", session_id="5e55a0", request_id=request_id)
    api.add_session("bob", session_id="b0b", request_id="another")
    if gone:
        delete_state(api)
    else:
        make_read_only(api, monkeypatch)
    reply = api.act("carol", request_id, "revoke", {"reason": "incident over"})
    assert (reply.status, reply.code) == (503, "unavailable")
    assert reply.message.endswith("; to end its sessions now, run: pgwarden kill 5e55a0")
    # The emergency path: a token still authenticates (its last use is not recorded), and
    # ending a session needs no store.
    killed = api.call("DELETE", "/api/v1/sessions/5e55a0", user="carol")
    assert (killed.status, killed.body["ended"]) == (200, True)
    assert session.ending is not None
    # With no live session left, the answer says how to find one.
    again = api.act("carol", request_id, "revoke")
    assert again.message.endswith(
        "; to end sessions now, run: pgwarden kill SESSION_ID (see: pgwarden sessions)"
    )


def test_a_refused_revocation_names_only_sessions_the_caller_may_see(api: ApiHarness) -> None:
    request_id = api.active_request("alice")
    api.add_session("alice", session_id="5e55a0", request_id=request_id)
    delete_state(api)
    # frank approves billing only: he may not see (or end) alice's orders session.
    reply = api.act("frank", request_id, "revoke")
    assert reply.status == 404  # as for any request he may not see
    assert "5e55a0" not in str(reply.body)
