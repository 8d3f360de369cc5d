"""The `pgwarden` command line: every row of `COMMANDS` parses, shows its help and runs, and a
command's module is imported only for that command (so `pgwarden --help` starts at once)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

from proxy.cli import COMMANDS, Command, build_parser

REPO = Path(__file__).resolve().parents[2]
# Runs `main(argv)` in a fresh interpreter and prints the modules it imported, on stderr.
IMPORTED_BY = """
import sys
from proxy.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("imported:", *sorted(sys.modules), file=sys.stderr)
"""


def imported_by(*argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED_BY, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("imported: ")]
    return set(line.split()[1:])


def test_help_imports_no_command() -> None:
    modules = imported_by("--help")
    assert "proxy.cli" in modules
    assert not {m for m in modules if m.startswith(("proxy.commands", "proxy.demo", "aiohttp"))}


def test_a_command_imports_its_own_module_and_not_the_others(tmp_path: Path) -> None:
    modules = imported_by("policy", "check", str(tmp_path / "missing.yaml"))
    assert "proxy.commands.checks" in modules
    assert not {"proxy.commands.serve", "proxy.commands.tokens", "proxy.runtime.serve"} & modules


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c.words))
def test_every_command_shows_its_arguments_in_its_help(
    command: Command, capsys: pytest.CaptureFixture[str]
) -> None:
    prog = "pgwarden " + " ".join(command.words)
    expected = argparse.ArgumentParser(prog=prog)
    command.load_arguments(expected)
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([*command.words, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(expected.format_usage())
    assert f"\n{command.help}\n" in shown


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c.words))
def test_every_command_names_a_function_that_runs_it(command: Command) -> None:
    module = import_module(command.module_name)
    assert callable(getattr(module, command.add_arguments))
    assert callable(getattr(module, command.run))


def test_a_command_runs_with_the_arguments_it_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr("proxy.commands.audit_verify.run", lambda args: seen.append(args) or 7)
    args = build_parser().parse_args(["audit", "verify", "log.jsonl", "--key-env", "K"])
    assert args.run(args) == 7
    assert seen == [args]
    assert (args.path, args.key_env) == (Path("log.jsonl"), "K")
