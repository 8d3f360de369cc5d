"""tests/unit/grants/test_lifecycle_credentials.py, on a PostgreSQL state store (conftest.py);
the search of the SQLite files for a password is replaced by a search of every table."""

from proxy.grants.lifecycle import GrantService
from proxy.grants.requests import RequestState
from tests.fixtures.clock import FakeClock
from tests.fixtures.grants import ALICE, BOB, request_in_state
from tests.fixtures.pg_state import PgState
from tests.unit.grants.test_lifecycle_credentials import (
    test_a_credential_is_issued_once_to_the_requester_of_an_active_grant,
    test_an_ended_grant_keeps_no_verifier,
    test_no_credential_for_a_grant_whose_level_left_the_policy,
    test_nobody_but_the_requester_gets_the_credential,
    test_reissuing_replaces_the_previous_credential,
)

__all__ = [
    "test_a_credential_is_issued_once_to_the_requester_of_an_active_grant",
    "test_an_ended_grant_keeps_no_verifier",
    "test_no_credential_for_a_grant_whose_level_left_the_policy",
    "test_nobody_but_the_requester_gets_the_credential",
    "test_reissuing_replaces_the_previous_credential",
]


def test_the_database_never_holds_the_plaintext_password(
    pg_state: PgState, service: GrantService, clock: FakeClock
) -> None:
    request = request_in_state(service, clock, RequestState.ACTIVE)
    passwords = [service.issue_credential(request.id, ALICE).password for _ in range(3)]
    service.approve(request_in_state(service, clock, RequestState.PENDING).id, BOB)
    tables = [name for (name,) in pg_state.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s", pg_state.schema
    )]  # fmt: skip
    dump = "\n".join(
        str(row) for table in tables for row in pg_state.query(f"SELECT * FROM {table}")
    )
    assert "SCRAM-SHA-256$" in dump  # the search does look at the verifiers
    for password in passwords:
        assert password not in dump
