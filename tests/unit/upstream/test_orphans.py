"""The sweep at start never holds the start up for long: a database that stalls costs a target its
SWEEP_TIMEOUT, all of them together SWEEP_BUDGET, and each is logged; roles reach the server
as an array value that reads back exactly. No PostgreSQL needed (a scripted server that stalls)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

import pytest

from proxy.policy.models import (
    AccessLevel,
    AccessLevelName,
    ApprovalRule,
    ControlRole,
    Policy,
    SecretRef,
    Target,
    TargetName,
    Upstream,
    UpstreamTlsMode,
)
from proxy.upstream import orphans
from proxy.upstream.orphans import sweep_orphans
from tests.fixtures.fake_upstream import STARTUP, Expect, FakeUpstream

TEST_TIMEOUT = 10.0


def stalled_target(name: str, port: int) -> Target:
    level = AccessLevel(AccessLevelName("ro"), "orders_ro", SecretRef(env="UNUSED"))
    return Target(
        TargetName(name), Upstream("127.0.0.1", port, "orders", UpstreamTlsMode.DISABLE),
        {level.name: level}, max_duration=timedelta(hours=1), approval=ApprovalRule(),
        control=ControlRole("control", SecretRef(env="PGWARDEN_TEST_SWEEP_PW")),
    )  # fmt: skip


def sweep_stalled(names: list[str]) -> tuple[list[orphans.Orphan], float]:
    async def main() -> tuple[list[orphans.Orphan], float]:
        async with FakeUpstream([Expect(STARTUP)]) as fake:  # then it never answers
            policy = Policy({}, {TargetName(n): stalled_target(n, fake.port) for n in names})
            started = time.monotonic()
            found = await sweep_orphans(policy, lambda _upstream: None)
            return found, time.monotonic() - started

    return asyncio.run(asyncio.wait_for(main(), TEST_TIMEOUT))


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGWARDEN_TEST_SWEEP_PW", "pw")


def test_a_stalled_database_costs_its_target_the_timeout_and_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(orphans, "SWEEP_TIMEOUT", 0.2)
    with caplog.at_level(logging.WARNING, "proxy.upstream.orphans"):
        found, took = sweep_stalled(["orders"])
    assert found == []
    assert took < 2
    assert "could not end backends a previous run of pgwarden left on target 'orders'" in (
        caplog.text
    )


def test_the_whole_sweep_ends_at_its_budget(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(orphans, "SWEEP_BUDGET", 0.3)
    with caplog.at_level(logging.WARNING, "proxy.upstream.orphans"):
        found, took = sweep_stalled(["a", "b"])
    assert found == []
    assert took < 2  # not SWEEP_TIMEOUT
    assert "target 'a' not swept" in caplog.text
    assert "target 'b' not swept" in caplog.text


def test_a_target_without_a_control_role_is_not_logged_in_to() -> None:
    target = stalled_target("orders", 1)
    bare = Target(target.name, target.upstream, target.access_levels, target.max_duration,
                  target.approval)  # fmt: skip
    assert asyncio.run(sweep_orphans(Policy({}, {bare.name: bare}))) == []


@pytest.mark.parametrize(
    ("roles", "literal"),
    [
        (["orders_ro"], '{"orders_ro"}'),
        (["a,b", "{x}", 'q"uote', "back\\slash"], '{"a,b","{x}","q\\"uote","back\\\\slash"}'),
    ],
)
def test_roles_travel_as_an_array_literal(roles: list[str], literal: str) -> None:
    assert orphans._text_array(roles) == literal
