"""`pgwarden policy check` and `pgwarden config check`: summary, problems, warnings, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import __version__
from proxy.cli import main
from proxy.commands.checks import EXIT_INVALID, EXIT_OK, EXIT_UNREADABLE
from tests.fixtures.policy_samples import VALID, edit

REPO = Path(__file__).resolve().parents[3]
POLICY_EXAMPLE = REPO / "config" / "policy.example.yaml"
CONFIG_EXAMPLE = REPO / "config" / "pgwarden.example.yaml"
SECRETS = {"CONTROL_PW": "x", "RO_PW": "x", "RW_PW": "x"}


def pgwarden(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command line, as an admin would (`python -m proxy` is `pgwarden`)."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_example_policy_passes_with_a_summary() -> None:
    result = pgwarden("policy", "check", str(POLICY_EXAMPLE))
    assert result.returncode == EXIT_OK, result.stderr
    out = result.stdout
    assert f"{POLICY_EXAMPLE}: valid policy" in out
    assert "users: 6; groups: 4 (dba, developers, oncall, security)" in out
    assert "admin groups: dba" in out
    assert "target orders: Orders database (production)" in out
    assert "  approval: 1 of users erin, groups dba; reason required" in out
    assert "    auto-approve groups oncall for read-only up to 1h" in out
    assert "  level read-only -> role orders_ro, max 4h" in out
    assert "  level read-write -> role orders_rw, max 1h" in out
    assert "    approval: 2 of groups dba; reason required" in out


def test_the_example_config_passes_with_a_summary() -> None:
    result = pgwarden("config", "check", str(CONFIG_EXAMPLE), env={"PGWARDEN_AUDIT_HMAC_KEY": "k"})
    assert result.returncode == EXIT_OK, result.stderr
    assert "proxy: listening on 127.0.0.1:6432, no client TLS, login timeout 10s" in result.stdout
    assert "messages up to 64 MiB" in result.stdout
    assert "upstream pool: off (every session logs in to the database anew)" in result.stdout
    assert "PGWARDEN_AUDIT_HMAC_KEY" not in result.stderr  # set: no warning


def test_the_config_summary_describes_an_enabled_upstream_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pgwarden.yaml"
    path.write_text(
        "paths: {policy: p.yaml, state: s.db, audit_log: a.log}\n"
        "audit: {hmac_key_env: PGWARDEN_TEST_UNSET_KEY}\n"
        "upstream_pool: {enabled: true, max_idle: 3, idle_timeout: 90s}\n",
        encoding="utf-8",
    )
    assert main(["config", "check", str(path)]) == EXIT_OK
    assert (
        "upstream pool: on, up to 3 idle backends per target and level, idle for 1m30s, "
        "at most 30m old" in capsys.readouterr().out
    )


def test_version() -> None:
    result = pgwarden("--version")
    assert result.returncode == 0
    # and whether the hot modules run compiled (tests/unit/test_native.py)
    assert result.stdout.strip().startswith(f"pgwarden {__version__}, ")


def test_an_invalid_policy_prints_every_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = edit("port: 5432", "port: 0", edit("max_duration: 4h", "max_duraton: 4h"))
    path = write(tmp_path, text)
    assert main(["policy", "check", str(path)]) == EXIT_INVALID
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}: targets.orders.max_duration: required (line 9)",
        f"{path}: targets.orders.upstream.port: must be from 1 to 65535, got 0 (line 11)",
        f"{path}: targets.orders.max_duraton: unknown key (did you mean max_duration?) (line 12)",
        f"{path}: invalid policy, 3 problem(s)",
    ]


def test_a_syntax_error_is_shown_with_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "version: 1\nusers: {alice: {groups: [dev}\n")
    assert main(["policy", "check", str(path)]) == EXIT_INVALID
    assert f"{path}: line 2, column 29: expected ',' or ']'" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_an_unreadable_file_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    path = tmp_path / "nope.yaml" if what == "missing" else tmp_path
    assert main(["policy", "check", str(path)]) == EXIT_UNREADABLE
    assert main(["config", "check", str(path)]) == EXIT_UNREADABLE
    err = capsys.readouterr().err
    assert err.count(f"pgwarden: cannot read {path}: ") == 2


def test_connect_reports_each_missing_role_secret_once_as_a_finding(tmp_path: Path) -> None:
    # No database is reached: every role's secret is missing, so no login is tried.
    text = VALID
    for name in SECRETS:
        text = edit(f"password_env: {name}", f"password_env: PGWARDEN_TEST_UNSET_{name}", text)
    path = write(tmp_path, text)
    result = pgwarden("policy", "check", "--connect", str(path))
    assert result.returncode == EXIT_INVALID
    assert "Traceback" not in result.stderr
    for where, name in [("control role pgw_control", "CONTROL_PW"),
                        ("level read-only (role orders_ro)", "RO_PW"),
                        ("level read-write (role orders_rw)", "RW_PW")]:  # fmt: skip
        variable = f"PGWARDEN_TEST_UNSET_{name}"
        assert result.stderr.count(variable) == 1  # the finding, and no warning besides it
        assert (
            f"{path}: target orders {where}: cannot log in: its password variable {variable} "
            "is not set (or empty); export it"
        ) in result.stderr.splitlines()


def test_a_valid_policy_has_no_warnings_when_everything_is_in_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    assert main(["policy", "check", str(write(tmp_path, VALID))]) == EXIT_OK
    assert capsys.readouterr().err == ""


def test_warnings_for_what_works_but_was_probably_not_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RO_PW")
    text = edit("    control: {role: pgw_control, password_env: CONTROL_PW}\n", "")
    text = edit("host: 127.0.0.1", "host: db.internal", text)
    text = edit("password_env: RW_PW", "password_file: missing.secret", text)
    text = edit("admin_groups: [dba]", "admin_groups: [dba, root]", text)
    assert main(["policy", "check", str(write(tmp_path, text))]) == EXIT_OK
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        "warning: target orders: no control role: sessions can be ended, but a backend that "
        "outlives its grant cannot be terminated without a role with pg_signal_backend",
        "warning: target orders: upstream db.internal is not a loopback address and tls is "
        "prefer: traffic may cross the network unencrypted or to an unverified server; use "
        "tls: require or verify-full",
        "warning: target orders level read-only: environment variable RO_PW is not set (or "
        "empty) right now",
        f"warning: target orders level read-write: secret file {tmp_path / 'missing.secret'} "
        "does not exist right now",
        "warning: admin group root has no members, so it gives nobody admin rights",
    ]


def test_a_rule_that_an_approver_could_never_pass_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = edit("required_approvals: 1", "required_approvals: 2")
    assert main(["policy", "check", str(write(tmp_path, text))]) == EXIT_OK
    assert (
        "warning: target orders: 2 approval(s) required and exactly that many eligible "
        "approvers, so a request by one of them can never be approved"
    ) in capsys.readouterr().err


def test_config_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pgwarden.yaml"
    path.write_text(
        "proxy: {listen: '0.0.0.0:6432'}\n"
        "paths: {policy: none.yaml, state: s.db, audit_log: a.log}\n"
        "audit: {hmac_key_file: key}\n",
        encoding="utf-8",
    )
    assert main(["config", "check", str(path)]) == EXIT_OK
    assert capsys.readouterr().err.splitlines() == [
        f"warning: audit HMAC key: secret file {tmp_path / 'key'} does not exist right now",
        "warning: proxy.listen 0.0.0.0:6432 is not a loopback address and proxy.tls is not set: "
        "client sessions would cross the network in clear text",
        f"warning: paths.policy: {tmp_path / 'none.yaml'} does not exist right now",
    ]


def test_an_invalid_config_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pgwarden.yaml"
    path.write_text("paths: {}\n", encoding="utf-8")
    assert main(["config", "check", str(path)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert f"{path}: paths.policy: required (line 1)" in err
    assert f"{path}: audit: required" in err
    assert f"{path}: invalid config, 4 problem(s)" in err


def test_a_group_without_a_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["policy"])
    assert caught.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err
