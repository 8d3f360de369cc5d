"""Temporary credentials: issued once to the requester, stored only as a SCRAM verifier."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from proxy.auth.credentials import ScramVerifier, make_verifier
from proxy.grants.lifecycle import GrantService, LifecycleError
from proxy.grants.requests import RequestState
from proxy.grants.rules import NotPermitted
from proxy.grants.store import SqliteStore
from proxy.policy.models import UserName
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import (
    ALICE,
    BOB,
    ERIN,
    MALLORY,
    PROD,
    PolicyBox,
    make_policy,
    request_in_state,
)


def test_a_credential_is_issued_once_to_the_requester_of_an_active_grant(
    service: GrantService, store: SqliteStore, clock: FakeClock
) -> None:
    request = request_in_state(service, clock, RequestState.ACTIVE)
    issued = service.issue_credential(request.id, ALICE)
    assert (issued.username, issued.expires_at, issued.request_id) == (
        ALICE,
        request.ends_at,
        request.id,
    )
    assert len(issued.password) >= 32
    assert issued.password not in repr(issued)
    with store.read() as tx:
        verifier = tx.credential(request.id)
    assert verifier is not None
    assert ScramVerifier.parse(verifier.to_postgres()) == verifier
    salted = make_verifier(issued.password, salt=verifier.salt, iterations=verifier.iterations)
    assert salted == verifier


@pytest.mark.parametrize("who", [BOB, ERIN, MALLORY])
def test_nobody_but_the_requester_gets_the_credential(
    service: GrantService, clock: FakeClock, who: UserName
) -> None:
    request = request_in_state(service, clock, RequestState.ACTIVE)
    with pytest.raises(NotPermitted):
        service.issue_credential(request.id, who)


def test_reissuing_replaces_the_previous_credential(
    service: GrantService, store: SqliteStore, clock: FakeClock
) -> None:
    request = request_in_state(service, clock, RequestState.ACTIVE)
    first = service.issue_credential(request.id, ALICE)
    second = service.issue_credential(request.id, ALICE)
    assert first.password != second.password
    with store.read() as tx:
        verifier = tx.credential(request.id)
    assert verifier is not None
    assert make_verifier(second.password, salt=verifier.salt) == verifier
    assert make_verifier(first.password, salt=verifier.salt) != verifier
    assert service.history(request.id)[-1].why.startswith("re-issued")


def test_an_ended_grant_keeps_no_verifier(
    service: GrantService, store: SqliteStore, clock: FakeClock
) -> None:
    request = request_in_state(service, clock, RequestState.ACTIVE)
    service.issue_credential(request.id, ALICE)
    service.revoke(request.id, ALICE, "done early")
    with store.read() as tx:
        assert tx.credential(request.id) is None


def test_no_credential_for_a_grant_whose_level_left_the_policy(
    service: GrantService, clock: FakeClock, policy: PolicyBox
) -> None:
    request = request_in_state(service, clock, RequestState.ACTIVE)
    policy.current = replace(make_policy(), targets={})
    with pytest.raises(LifecycleError, match="is revoked"):  # by the policy, when read
        service.issue_credential(request.id, ALICE)


# --- no plaintext -------------------------------------------------------------------------


def test_the_database_never_holds_the_plaintext_password(
    db_path: Path, store: SqliteStore, service: GrantService, clock: FakeClock
) -> None:
    request = request_in_state(service, clock, RequestState.ACTIVE)
    passwords = [service.issue_credential(request.id, ALICE).password for _ in range(3)]
    service.approve(
        request_in_state(service, clock, RequestState.PENDING).id, BOB
    )  # more WAL traffic
    files = [p for p in db_path.parent.iterdir() if p.name.startswith(db_path.name)]
    assert any(p.name.endswith("-wal") for p in files)
    blob = b"".join(p.read_bytes() for p in files)
    with store.read() as tx:
        verifier = tx.credential(request.id)
    assert verifier is not None
    assert verifier.to_postgres().encode() in blob  # the search does look at the right bytes
    for password in passwords:
        assert password.encode() not in blob
    assert service.active_grant(ALICE, PROD, clock.now()) is not None
