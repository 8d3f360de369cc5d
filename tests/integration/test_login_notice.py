"""At login, a NOTICE says how long the access lasts (issue 16): a short grant is no surprise.

`pgwarden: read-only on "orders" until 14:05 UTC (29 min left)`, severity NOTICE, SQLSTATE 00000,
sent after BackendKeyData and before the first ReadyForQuery, where PostgreSQL puts its own
startup notices: psql prints it when it connects, and a driver hands it to its notice handler.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from proxy.session.opening import time_left
from tests.fixtures.clients import raw_login, run_psql
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.rawpg import error_fields

pytestmark = pytest.mark.integration

NOTICE = re.compile(
    r'pgwarden: read-only on "orders" until \d\d:\d\d UTC \((29|30) min left\)'
    r'|pgwarden: read-only on "orders" until \d{4}-\d\d-\d\d \d\d:\d\d UTC \((29|30) min left\)'
)


def test_the_notice_comes_before_the_first_ready_for_query(pgwarden: RunningPgwarden) -> None:
    credential = pgwarden.grant(duration=timedelta(minutes=30))
    greeting = _greeting(pgwarden, credential.username, credential.password)
    kinds = [kind for kind, _ in greeting]
    assert kinds[-3:] == [b"K", b"N", b"Z"]
    fields = error_fields(greeting[-2][1])
    assert (fields["S"], fields["V"], fields["C"]) == ("NOTICE", "NOTICE", "00000")
    assert NOTICE.fullmatch(fields["M"]), fields["M"]


def _greeting(warden: RunningPgwarden, user: str, password: str) -> list[tuple[bytes, bytes]]:
    """Every message from AuthenticationOk to the first ReadyForQuery of a fresh login."""
    messages: list[tuple[bytes, bytes]] = []
    login = raw_login(warden.host, warden.port, user, password, keep_greeting=messages)
    assert login.conn is not None, login.error
    login.conn.close()
    return messages


def test_psql_shows_it_on_connect(pgwarden: RunningPgwarden) -> None:
    credential = pgwarden.grant(duration=timedelta(minutes=30))
    result = run_psql(pgwarden.host, pgwarden.port, credential.username, credential.password,
                      ["-c", "SELECT 1"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert NOTICE.search(result.stderr), result.stderr


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0 s"), (59.9, "59 s"), (119, "119 s"), (120, "2 min"), (29 * 60 + 59, "29 min"),
     (3600, "1 h 0 min"), (2 * 3600 + 5 * 60 + 30, "2 h 5 min"), (-3, "0 s")],
)  # fmt: skip
def test_time_left_is_rounded_down(seconds: float, shown: str) -> None:
    assert time_left(seconds) == shown


def test_with_login_notice_off_psql_prints_nothing_on_stderr(
    deployment: PgwardenDeployment, tmp_path: Path
) -> None:
    config = deployment.write_files(tmp_path)
    config.write_text(config.read_text().replace("  workers:", "  login_notice: false\n  workers:"))
    with running_pgwarden(config) as warden:
        credential = warden.grant(duration=timedelta(minutes=30))
        result = run_psql(warden.host, warden.port, credential.username, credential.password,
                          ["-c", "SELECT 1"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
