"""Every active grant logs in with its own credential (issue 15, item 7).

A user with two active grants on one target (read-only and read-write) can use either password;
the session is bound to the grant whose credential was proven: its upstream role, its end, its
audit record. A credential re-issued for one grant ends only that grant's old password. On each
state store (`[sqlite]`, `[postgres]`).
"""

from __future__ import annotations

import psycopg
import pytest

from proxy.grants.requests import IssuedCredential
from tests.fixtures.adversary import on_loop
from tests.fixtures.clients import login_failure_text, raw_login
from tests.fixtures.pgwarden import RO_ROLE, RW_ROLE, RunningPgwarden
from tests.fixtures.state_backends import BOTH_STORES

pytestmark = [pytest.mark.integration, BOTH_STORES]


def role_of(warden: RunningPgwarden, credential: IssuedCredential) -> str:
    with psycopg.connect(warden.dsn(credential), autocommit=True) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


def test_two_grants_on_one_target_each_log_in_as_their_own_level(
    pgwarden: RunningPgwarden,
) -> None:
    read_only = pgwarden.grant(level="read-only")
    read_write = pgwarden.grant(level="read-write")
    assert role_of(pgwarden, read_only) == RO_ROLE  # the older credential still works
    assert role_of(pgwarden, read_write) == RW_ROLE
    with psycopg.connect(pgwarden.dsn(read_only)) as conn:
        registry = pgwarden.runtime.server.ctx.registry
        sessions = on_loop(pgwarden, lambda: list(registry))
        (session,) = [s for s in sessions if s.info.backend_process_id == conn.info.backend_pid]
        assert session.info.grant_id == read_only.request_id
        assert session.info.access_level == "read-only"
        assert session.info.grant_ends_at == pgwarden.grants.get(read_only.request_id).ends_at


def test_the_same_challenge_serves_both_credentials(pgwarden: RunningPgwarden) -> None:
    first = pgwarden.grant(user="bob", level="read-only")
    second = pgwarden.grant(user="bob", level="read-write")
    salts = set()
    for credential in (first, second):
        login = raw_login(pgwarden.host, pgwarden.port, credential.username, credential.password)
        assert login.conn is not None, login.error
        login.conn.close()
        salts.add(login.server_first["s"])
    assert len(salts) == 1  # one salt per user: the challenge does not say which grant


def test_revoking_one_grant_leaves_the_other_credential_working(
    pgwarden: RunningPgwarden,
) -> None:
    read_only = pgwarden.grant(user="dave", level="read-only")
    read_write = pgwarden.grant(user="dave", level="read-write")
    pgwarden.grants.revoke(read_write.request_id, read_write.username, "done")
    assert "password authentication failed" in login_failure_text(pgwarden.dsn(read_write))
    assert role_of(pgwarden, read_only) == RO_ROLE


def test_reissuing_one_grant_ends_only_its_own_old_password(pgwarden: RunningPgwarden) -> None:
    read_only = pgwarden.grant(user="carol", level="read-only", approver="dave")
    read_write = pgwarden.grant(user="carol", level="read-write", approver="dave")
    renewed = pgwarden.grants.issue_credential(read_only.request_id, read_only.username)
    assert "password authentication failed" in login_failure_text(pgwarden.dsn(read_only))
    assert role_of(pgwarden, renewed) == RO_ROLE
    assert role_of(pgwarden, read_write) == RW_ROLE
