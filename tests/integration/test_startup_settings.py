"""Startup settings reach the database as PostgreSQL takes them; the refused ones are a FATAL.

Issue 15, item 4 (SECURITY.md row 22): `options` (`-c name=value`, `--name=value`) and any other
run-time setting in the StartupMessage go upstream, where the database's own checks apply, with
and without the upstream pool; `user`/`database` overrides, `role`, `session_authorization`,
`default_transaction_read_only`, `replication` and connection-start-only settings are refused
before any password is asked for, naming the setting.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors

from tests.fixtures.clients import raw_login
from tests.fixtures.pgwarden import PgwardenDeployment, RunningPgwarden, running_pgwarden
from tests.fixtures.rawpg import RawPg, cstring

pytestmark = pytest.mark.integration

MODES = {"direct backend": False, "pooled backend": True}


@pytest.fixture(scope="module", params=MODES.values(), ids=MODES.keys())
def warden(
    request: pytest.FixtureRequest,
    deployment: PgwardenDeployment,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningPgwarden]:
    directory = tmp_path_factory.mktemp("settings")
    with running_pgwarden(deployment.write_files(directory, upstream_pool=request.param)) as w:
        yield w


def show(conn: psycopg.Connection[tuple[object, ...]], name: str) -> str:
    row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


def show_raw(conn: RawPg, name: str) -> bytes:
    conn.send(b"Q", cstring(f"SHOW {name}"))
    rows = [payload for kind, payload in conn.read_until_ready() if kind == b"D"]
    (length,) = struct.unpack("!i", rows[0][2:6])  # one column: int16 count, int32 length
    return rows[0][6 : 6 + length]


def test_statement_timeout_in_options_cancels_a_long_query(warden: RunningPgwarden) -> None:
    dsn = warden.dsn(warden.grant(), options="-c statement_timeout=100ms")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert show(conn, "statement_timeout") == "100ms"
        with pytest.raises(errors.QueryCanceled) as caught:
            conn.execute("SELECT pg_sleep(1)")
        assert caught.value.sqlstate == "57014"


def test_every_form_of_options_and_the_last_value_wins(warden: RunningPgwarden) -> None:
    options = (
        r"-c search_path=pg_catalog,public --lock-timeout=2s -cDateStyle=SQL,DMY "
        r"-c application_name=with\ space -c default_transaction_isolation=serializable"
    )
    with psycopg.connect(warden.dsn(warden.grant(), options=options), autocommit=True) as conn:
        assert show(conn, "search_path") == "pg_catalog,public"
        assert show(conn, "lock_timeout") == "2s"
        assert show(conn, "DateStyle") == "SQL, DMY"
        assert show(conn, "default_transaction_isolation") == "serializable"
        assert conn.info.parameter_status("application_name") == "with space"


def test_raw_startup_parameters_pass_and_override_options(warden: RunningPgwarden) -> None:
    credential = warden.grant()
    login = raw_login(
        warden.host, warden.port, credential.username, credential.password,
        parameters={"options": "-c statement_timeout=5s -c work_mem=2MB",
                    "statement_timeout": "7s", "idle_in_transaction_session_timeout": "9s"},
    )  # fmt: skip
    assert login.conn is not None, login.error
    with login.conn as conn:
        names = ("statement_timeout", "work_mem", "idle_in_transaction_session_timeout")
        values = [show_raw(conn, name) for name in names]
    assert values == [b"7s", b"2MB", b"9s"]


def test_reset_in_a_pooled_backend_leaves_nothing_for_the_next_session(
    warden: RunningPgwarden,
) -> None:
    credential = warden.grant()
    with psycopg.connect(warden.dsn(credential, options="-c work_mem=3MB")) as conn:
        assert show(conn, "work_mem") == "3MB"
    with psycopg.connect(warden.dsn(credential), autocommit=True) as conn:
        assert show(conn, "work_mem") == "4MB"  # the server's default again


def test_a_setting_the_database_refuses_is_its_fatal_passed_on(warden: RunningPgwarden) -> None:
    dsn = warden.dsn(warden.grant(), options="-c statement_timeout=soon")
    with pytest.raises(psycopg.OperationalError, match="invalid value for parameter"):
        psycopg.connect(dsn).close()
    with pytest.raises(psycopg.OperationalError, match="unrecognized configuration parameter"):
        psycopg.connect(warden.dsn(warden.grant(), options="-c no_such_setting=1")).close()


REFUSED = {
    "role in options": ({"options": "-c role=pgwarden_test_rw"}, "role"),
    "session_authorization": ({"session_authorization": "postgres"}, "session_authorization"),
    "read-only default": ({"options": "--default-transaction-read-only=off"},
                          "default_transaction_read_only"),
    "replication": ({"replication": "database"}, "replication"),
    "user in options": ({"options": "-c user=postgres"}, "user"),
    "connection-start only": ({"post_auth_delay": "60"}, "post_auth_delay"),
}  # fmt: skip


@pytest.mark.parametrize(("parameters", "name"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_settings_are_a_fatal_before_any_password(
    warden: RunningPgwarden, parameters: dict[str, str], name: str
) -> None:
    with RawPg.connect(warden.host, warden.port, 10.0) as conn:
        conn.send_startup({"user": "alice", "database": "orders", **parameters})
        fields = conn.expect_error()  # no AuthenticationSASL first: no password was asked for
    assert fields["S"] == "FATAL"
    assert fields["C"] == "42501"
    assert fields["M"].startswith(f'pgwarden: the startup setting "{name}" is refused: ')


def test_a_backend_switch_in_options_is_refused_as_postgres_would(
    warden: RunningPgwarden,
) -> None:
    with RawPg.connect(warden.host, warden.port, 10.0) as conn:
        conn.send_startup({"user": "alice", "database": "orders", "options": "-F"})
        fields = conn.expect_error()
    assert (fields["S"], fields["C"]) == ("FATAL", "42601")
    assert 'unsupported switch "-F" in options' in fields["M"]


def test_replication_off_is_an_ordinary_login(warden: RunningPgwarden) -> None:
    credential = warden.grant()
    login = raw_login(
        warden.host, warden.port, credential.username, credential.password,
        parameters={"replication": "false"},
    )  # fmt: skip
    assert login.conn is not None, login.error
    login.conn.close()
