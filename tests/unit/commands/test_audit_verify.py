"""`pgwarden audit verify`: exit 0 only when the log verifies, 1 when it does not, 2 when the log
or the key cannot be read. The real process (`python -m proxy`) for what only a process shows:
its exit statuses and a key from its environment; `main` in this process for the rest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.audit.records import log_files
from proxy.audit.verify import verify
from tests.unit.audit.helpers import KEY, VerifyCommand, build_log, lines_of, write_lines

ROOT = Path(__file__).resolve().parents[3]


def pgwarden(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", *map(str, args)],
        check=False,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> VerifyCommand:
    return VerifyCommand(capsys, monkeypatch)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    build_log(path, 30)
    return path


def test_a_whole_log_verifies_with_the_key_from_the_environment(log: Path) -> None:
    result = pgwarden(log, "--key-env", "AUDIT_KEY", env={"AUDIT_KEY": KEY.decode()})
    assert result.returncode == 0, result.stderr
    report = verify(log, KEY)
    assert result.stdout == f"{report.summary()}\n"
    assert result.stdout.startswith(f"ok: {report.records} records in {len(report.files)} files")
    assert result.stderr == ""


def test_a_tampered_log_exits_1_and_names_the_record(log: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY.decode() + "\n")  # a final newline is not part of the key
    file = log_files(log)[1]
    lines = lines_of(file)
    del lines[2]
    write_lines(file, lines)
    result = pgwarden(log, "--key-file", key_file)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"FAILED: {file.name}:3: seq ")
    assert "are missing" in result.stderr


def test_a_usage_error_exits_2() -> None:
    result = pgwarden("--key-env", "AUDIT_KEY", "--key-file", "key")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr
    assert result.stdout == ""


def test_the_server_config_supplies_key_and_path(
    log: Path, tmp_path: Path, in_process: VerifyCommand
) -> None:
    config = tmp_path / "pgwarden.yaml"
    config.write_text(
        f"paths:\n  policy: policy.yaml\n  state: state.db\n  audit_log: {log.name}\n"
        "audit:\n  hmac_key_env: AUDIT_KEY\n"
    )
    code, out, err = in_process("--config", config, env={"AUDIT_KEY": KEY.decode()})
    assert code == 0, err
    assert out == f"{verify(log, KEY).summary()}\n"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["{log}.missing", "--key-env", "AUDIT_KEY"], {"AUDIT_KEY": KEY.decode()}, "no audit log"),
        (["{log}", "--key-env", "NO_SUCH_VAR_FOR_PGWARDEN"], {}, "missing or empty"),
        (["{log}", "--key-env", "AUDIT_KEY"], {"AUDIT_KEY": "short"}, "at least 16 bytes"),
        (["{log}"], {}, "one of the arguments"),
    ],
)
def test_unreadable_input_exits_2(
    log: Path, args: list[str], env: dict[str, str], message: str, in_process: VerifyCommand
) -> None:
    code, out, err = in_process(*[a.format(log=log) for a in args], env=env)
    assert code == 2
    assert message in err
    assert out == ""
