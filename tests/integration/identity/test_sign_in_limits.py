"""A stranger cannot flood sign-ins: beginning one is limited per client address, and the flows
in progress are capped for everyone (each is a row in the shared store, written by a call that
carries no credential)."""

from __future__ import annotations

import sqlite3

import pytest

from proxy.api.auth_routes import StartLimit
from tests.fixtures.clock import FakeClock
from tests.integration.identity.test_sign_in import CALLBACK, Sso, real_now_clock, sso

__all__ = ["real_now_clock", "sso"]  # fixtures


def begin(sso: Sso) -> tuple[int, str]:
    reply = sso.post("/browser", {"redirect_uri": CALLBACK})
    return reply.status, str(reply.body.get("error", {}).get("message", ""))


def flows(sso: Sso) -> int:
    with sqlite3.connect(sso.api.store.path) as conn:  # type: ignore[attr-defined]
        return int(conn.execute("SELECT count(*) FROM sign_in_flows").fetchone()[0])


def test_an_address_that_begins_sign_ins_by_the_dozen_is_held_back(
    sso: Sso, real_now_clock: FakeClock
) -> None:
    for _ in range(StartLimit.BURST):
        assert begin(sso)[0] == 200
    status, message = begin(sso)
    assert status == 429
    assert message.startswith("too many sign-ins begun from 127.0.0.1; try again in")
    assert flows(sso) == StartLimit.BURST  # the refused one wrote nothing
    real_now_clock.advance(StartLimit.REFILL)
    assert begin(sso)[0] == 200


def test_the_sign_ins_in_progress_are_capped_for_every_address(
    sso: Sso, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("proxy.identity.signin.MAX_PENDING_FLOWS", 3)
    for _ in range(3):
        assert begin(sso)[0] == 200
    status, message = begin(sso)
    assert (status, message) == (
        429, "3 sign-ins are in progress already; try again in a few minutes"
    )  # fmt: skip
    assert flows(sso) == 3
