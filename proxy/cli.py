"""The `pgwarden` command line (`pgwarden ...` or `python -m proxy ...`).

Subcommands are rows of one registry, `COMMANDS`: a `Command` names its words (`policy check`),
adds its own arguments and runs. The function that runs it lives in `proxy/commands/` (the
checks in `checks.py`); adding a subcommand is one row here, never a branch in a dispatcher. Words
shared by several commands (`policy`, `config`) become argparse groups, with the help from
`GROUPS`.

Exit status: what the command returns; 2 for a usage error (argparse's convention). The
requester/approver commands (`proxy/commands`) document theirs in `--help`: 0 done, 1 refused by
the server, 2 usage or configuration, 3 server unreachable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxy import __version__
from proxy.commands import access, audit_verify, checks, devcert, serve, tokens
from proxy.commands import requests as req
from proxy.commands.transport import cli_command
from proxy.demo import walkthrough


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
    ("token",): "API tokens (on the server host, against its state store)",
    ("audit",): "work with the audit log",
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
        checks.add_policy_check_arguments,
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
    Command(("demo",), "a guided walkthrough on a throwaway local PostgreSQL (make demo)",
            walkthrough.add_arguments, walkthrough.run),
    Command(("audit", "verify"),
            "check that the audit log is whole and untampered (exit 0 only if it verifies)",
            audit_verify.add_arguments, audit_verify.run),
    Command(("token", "create"), "create an API token for a policy user and print it once",
            tokens.add_create_arguments, tokens.run_create),
    Command(("token", "list"), "list API tokens (never their secrets)",
            tokens.add_common, tokens.run_list),
    Command(("token", "revoke"), "revoke an API token", tokens.add_revoke_arguments,
            tokens.run_revoke),
    # The people's side: clients of the HTTP API (PGWARDEN_URL, PGWARDEN_TOKEN).
    Command(("request",), "ask for time-boxed access to a target",
            req.add_request, cli_command(req.run_request)),
    Command(("requests",), "list the requests you can see",
            req.add_requests, cli_command(req.run_requests)),
    Command(("show",), "show one request with its approvals and history",
            req.add_id, cli_command(req.run_show)),
    Command(("approve",), "approve a request", req.add_approve, cli_command(req.run_approve)),
    Command(("deny",), "deny a request", req.add_deny, cli_command(req.run_deny)),
    Command(("cancel",), "withdraw your pending request", req.add_id, cli_command(req.run_cancel)),
    Command(("revoke",), "end an active grant now (its sessions end too)",
            req.add_revoke, cli_command(req.run_revoke)),
    Command(("credentials",), "get a temporary password for an active grant",
            access.add_credentials, cli_command(access.run_credentials)),
    Command(("psql",), "run psql with a fresh credential for an active grant",
            access.add_psql, cli_command(access.run_psql)),
    Command(("sessions",), "list the live sessions you can see",
            access.add_sessions, cli_command(access.run_sessions)),
    Command(("kill",), "end a live session (admins and approvers)",
            access.add_kill, cli_command(access.run_kill)),
)  # fmt: skip


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
