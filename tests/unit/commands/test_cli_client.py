"""The requester/approver CLI against a real API server (in-process): output, `--json`, exit codes,
configuration; and the pure helpers behind its tables and times."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.commands import render
from proxy.commands.client_config import ClientConfigError, load_client_config
from proxy.commands.requests import describe, wait_for_decision
from proxy.commands.transport import ApiClient
from tests.fixtures.api import ApiHarness, RunAs


def test_request_approve_credentials_as_people_see_them(api: ApiHarness, as_user: RunAs) -> None:
    status, out, _ = as_user("alice", "request", "orders", "--access", "read-only",
                             "--duration", "30m", "--reason", "incident 42")  # fmt: skip
    assert status == 0
    first = out.splitlines()[0]
    assert first.startswith("request ")
    assert "is pending: read-only on orders for 30m" in first
    assert "it needs 1 more approval from: dba (group)" in out
    request_id = first.split()[1]
    assert f"an approver runs: pgwarden approve {request_id}" in out

    status, _, err = as_user("alice", "approve", request_id)
    assert status == 1
    assert err.startswith(f"pgwarden: you cannot approve your own request {request_id}")

    status, _, err = as_user("alice", "credentials", request_id)
    assert status == 1
    assert err.strip() == (
        f"pgwarden: request {request_id} is pending; it needs 1 more approval from: dba (group)"
    )

    status, out, _ = as_user("carol", "approve", request_id, "--comment", "ok")
    assert status == 0
    assert out.startswith(f"approved: request {request_id} is active")
    assert f"connect with: pgwarden psql {request_id}" in out

    status, out, err = as_user("alice", "credentials", request_id)
    assert status == 0
    assert out.startswith("postgresql://alice:")
    assert out.strip().endswith("@127.0.0.1:6432/orders?sslmode=disable")
    assert "expires 2026-01-05 09:30:00 UTC" in err

    status, out, _ = as_user("alice", "credentials", request_id, "--json")
    document = json.loads(out)
    assert set(document) >= {"user", "password", "host", "port", "database", "dsn", "expires_at"}


def test_requests_show_and_the_other_actions(api: ApiHarness, as_user: RunAs) -> None:
    mine = api.create("alice").body
    other = api.create("bob").body["id"]
    status, out, _ = as_user("carol", "requests")
    assert status == 0
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "STATE", "REQUESTER", "TARGET", "LEVEL", "DURATION",
                              "CREATED", "ENDS", "REASON"]  # fmt: skip
    assert len(rows) == 2
    assert len({row.index("pending") for row in rows}) == 1  # aligned
    status, out, _ = as_user("alice", "requests", "--state", "pending", "--json")
    assert [r["id"] for r in json.loads(out)["requests"]] == [mine["id"]]

    status, out, _ = as_user("alice", "show", mine["id"])
    assert status == 0
    assert "needs" in out
    assert "history:" in out

    assert as_user("alice", "show", other)[0] == 1  # not hers: 404 -> exit 1
    status, _, err = as_user("alice", "show", other)
    assert "no request" in err
    assert "pgwarden requests" in err

    assert as_user("carol", "deny", other, "--reason", "not now")[1].startswith("denied: ")
    assert as_user("alice", "cancel", mine["id"])[1].startswith("cancelled: ")
    active = api.active_request()
    status, out, _ = as_user("carol", "revoke", active, "--reason", "done")
    assert status == 0
    assert "revoked" in out
    assert "live sessions are being ended" in out


def test_sessions_and_kill(api: ApiHarness, as_user: RunAs) -> None:
    session = api.add_session("alice", session_id="a1")
    status, out, _ = as_user("carol", "sessions")
    assert status == 0
    assert out.splitlines()[0].split() == ["SESSION", "USER", "TARGET", "LEVEL", "CLIENT",
                                           "STARTED", "ENDS"]  # fmt: skip
    assert "a1" in out
    assert as_user("alice", "kill", "a1")[0] == 1
    status, out, _ = as_user("carol", "kill", "a1", "--reason", "runaway")
    assert (status, out.strip()) == (0, "session a1 of alice on orders (read-only) ended")
    assert session.ending is not None
    assert as_user("bob", "sessions")[1].strip() == "no live sessions that you can see"


def test_json_errors_and_exit_codes(as_user: RunAs, monkeypatch: pytest.MonkeyPatch) -> None:
    status, out, _ = as_user("alice", "show", "0123456789abcdef", "--json")
    assert status == 1
    assert json.loads(out)["error"]["code"] == "not_found"
    monkeypatch.setenv("PGWARDEN_URL", "http://127.0.0.1:9")  # nobody listens
    status, _, err = as_user("alice", "requests")
    assert status == 3
    assert "cannot reach pgwarden at http://127.0.0.1:9" in err
    monkeypatch.delenv("PGWARDEN_URL")
    status, _, err = as_user("alice", "requests")
    assert status == 2
    assert "no server URL: set PGWARDEN_URL and PGWARDEN_TOKEN" in err
    with pytest.raises(SystemExit) as usage:
        main(["request", "orders", "--access", "read-only", "--duration", "90"])
    assert usage.value.code == 2


def test_wait_polls_until_the_decision(api: ApiHarness) -> None:
    created = api.create().body
    client = ApiClient(load_client_config({"PGWARDEN_URL": f"http://127.0.0.1:{api.server.port}",
                                           "PGWARDEN_TOKEN": api.token("alice")}))  # fmt: skip
    naps: list[float] = []

    def approve_on_first_nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 1:
            api.act("carol", created["id"], "approve")

    final = wait_for_decision(client, created, progress=False, sleep=approve_on_first_nap)
    assert final["state"] == "active"
    assert naps == [1.0]


def test_psql_gets_the_credential_in_its_environment_never_its_arguments(
    api: ApiHarness, tmp_path: Path
) -> None:
    request_id = api.active_request()
    fake = tmp_path / "bin" / "psql"
    fake.parent.mkdir()
    fake.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        keys = ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSSLMODE"]
        print(json.dumps({{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in keys}}}}))
    """)
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
           "PGWARDEN_URL": f"http://127.0.0.1:{api.server.port}",
           "PGWARDEN_TOKEN": api.token("alice")}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "psql", request_id, "--", "-c", "select 1"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["argv"] == ["-c", "select 1"]
    password = seen["env"]["PGPASSWORD"]
    assert len(password) >= 20
    assert password not in " ".join(seen["argv"])
    assert seen["env"] | {"PGPASSWORD": "x"} == {
        "PGHOST": "127.0.0.1", "PGPORT": "6432", "PGUSER": "alice", "PGPASSWORD": "x",
        "PGDATABASE": "orders", "PGSSLMODE": "disable",
    }  # fmt: skip


# --- configuration -----------------------------------------------------------------------------


def test_the_config_file_fills_in_what_the_environment_lacks(tmp_path: Path) -> None:
    path = tmp_path / "pgwarden" / "cli.yaml"
    path.parent.mkdir()
    path.write_text("url: http://127.0.0.1:8080/\ntoken: pgw_fromfile\n")
    path.chmod(0o600)
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert load_client_config(env).url == "http://127.0.0.1:8080"
    assert load_client_config(env).token == "pgw_fromfile"
    assert load_client_config({**env, "PGWARDEN_TOKEN": "pgw_env"}).token == "pgw_env"


def test_a_readable_token_file_draws_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pgwarden" / "cli.yaml"
    path.parent.mkdir()
    path.write_text("url: http://127.0.0.1:8080\ntoken: pgw_x\n")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    load_client_config({"XDG_CONFIG_HOME": str(tmp_path)})
    assert "others can read it (chmod 600" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "env", "wanted"),
    [
        ("url: http://a:1\nsecret: x\n", {}, "unknown key(s) secret"),
        ("- a\n", {}, "must be a mapping"),
        ("url: [1]\n", {}, "url must be text"),
        ("url: http://a:1\n", {}, "no API token"),
        ("", {"PGWARDEN_URL": "ftp://x", "PGWARDEN_TOKEN": "t"}, "must be an http:// or https://"),
        ("", {"PGWARDEN_URL": "http://a:99999", "PGWARDEN_TOKEN": "t"}, "is not a valid URL"),
    ],
)
def test_bad_configuration_is_explained(
    tmp_path: Path, content: str, env: dict[str, str], wanted: str
) -> None:
    path = tmp_path / "pgwarden" / "cli.yaml"
    path.parent.mkdir()
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ClientConfigError) as caught:
        load_client_config({"XDG_CONFIG_HOME": str(tmp_path), **env})
    assert wanted in str(caught.value)


# --- rendering ---------------------------------------------------------------------------------

NOON = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("offset", "wanted"),
    [
        (timedelta(seconds=0), "now"),
        (timedelta(seconds=45), "in 45s"),
        (timedelta(minutes=55, seconds=10), "in 55m"),
        (timedelta(hours=2, minutes=5), "in 2h5m"),
        (-timedelta(minutes=3), "3m ago"),
        (timedelta(days=3, hours=4), "in 3d4h"),
    ],
)
def test_relative_hints_are_rounded_for_people(offset: timedelta, wanted: str) -> None:
    assert render.relative(NOON + offset, NOON) == wanted


def test_times_are_utc_clock_times_with_a_hint() -> None:
    assert render.when("2026-01-05T12:55:00Z", NOON) == "12:55:00 UTC (in 55m)"
    assert render.when("2026-01-06T12:00:00+00:00", NOON) == "2026-01-06 12:00:00 UTC (in 1d)"
    assert render.when(None, NOON) == "-"
    assert render.short_time("2026-01-04T23:00:00Z", NOON) == "01-04 23:00"


def test_tables_align_and_neutralise_control_characters() -> None:
    text = render.table(("A", "BB"), [("x", "evil\x1b[2J"), ("longer", "y" * 100)])
    lines = text.splitlines()
    assert lines[0] == "A       BB"
    assert lines[1] == "x       evil?[2J"
    assert lines[2].endswith("…")
    assert len(lines[2]) == 8 + render.MAX_CELL


def test_describe_says_who_closed_and_why() -> None:
    text = describe({"id": "ab", "state": "revoked", "access_level": "read-only",
                     "target": "orders", "duration": "30m", "requester": "alice",
                     "closed_by": "carol", "close_reason": "done", "closed_at": None})  # fmt: skip
    assert text.splitlines() == [
        "request ab is revoked: read-only on orders for 30m, asked by alice",
        "revoked by carol at - : done".replace(" : ", ": "),
    ]
