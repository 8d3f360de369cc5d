"""The `pgwarden` command line (`pgwarden ...` or `python -m proxy ...`).

Subcommands are rows of one registry, `COMMANDS`: a `Command` names its words (`policy check`),
adds its own arguments and runs. The function that runs it lives in the module of its feature
(`proxy/checks.py` for the checks); adding a subcommand is one row here, never a branch in a
dispatcher. Words shared by several commands (`policy`, `config`) become argparse groups, with the
help from `GROUPS`.

Exit status: what the command returns; 2 for a usage error (argparse's convention).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxy import __version__, checks, devcert, serve


@dataclass(frozen=True, slots=True)
class Command:
    words: tuple[str, ...]  # e.g. ("policy", "check")
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


GROUPS: dict[tuple[str, ...], str] = {
    ("policy",): "work with the policy file",
    ("config",): "work with the server config file",
    ("tls",): "TLS certificates",
}

COMMANDS: tuple[Command, ...] = (
    Command(
        ("serve",),
        "run the pgwarden proxy (Postgres listener) until SIGTERM",
        serve.add_arguments,
        serve.run,
    ),
    Command(
        ("policy", "check"),
        "validate a policy file and summarise it",
        checks.add_file_argument,
        checks.run_policy_check,
    ),
    Command(
        ("config", "check"),
        "validate a server config file and summarise it",
        checks.add_file_argument,
        checks.run_config_check,
    ),
    Command(
        ("tls", "dev-cert"),
        "make a throwaway CA and server certificate for trying TLS (not for production)",
        devcert.add_arguments,
        devcert.run,
    ),
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgwarden", description="Just-in-time access gateway for PostgreSQL."
    )
    parser.add_argument("--version", action="version", version=f"pgwarden {__version__}")
    groups: dict[tuple[str, ...], argparse._SubParsersAction[argparse.ArgumentParser]] = {
        (): parser.add_subparsers(metavar="COMMAND", required=True)
    }
    for command in commands:
        for depth in range(1, len(command.words)):
            _group(groups, command.words[:depth])
        *prefix, last = command.words
        leaf = groups[tuple(prefix)].add_parser(last, help=command.help, description=command.help)
        command.add_arguments(leaf)
        leaf.set_defaults(run=command.run)
    return parser


def _group(
    groups: dict[tuple[str, ...], argparse._SubParsersAction[argparse.ArgumentParser]],
    words: tuple[str, ...],
) -> None:
    if words in groups:
        return
    help_text = GROUPS.get(words, "")
    parser = groups[words[:-1]].add_parser(words[-1], help=help_text, description=help_text)
    groups[words] = parser.add_subparsers(metavar="COMMAND", required=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        print("pgwarden: interrupted", file=sys.stderr)
        return 130
    return status
