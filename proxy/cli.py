"""The `pgwarden` command line (`pgwarden ...` or `python -m proxy ...`).

Subcommands are rows of one registry, `COMMANDS`: a `Command` names its words (`policy check`),
its help, and the module in `proxy/commands/` (the checks in `checks.py`) with the two functions
that add its arguments and run it; adding a subcommand is one row here, never a branch in a
dispatcher. Words shared by several commands (`policy`, `config`) become argparse groups, with
the help from `GROUPS`.

A command's module is imported only when that command is parsed (its arguments are added then)
or run, never for the others: `pgwarden policy check` does not load the server, and
`pgwarden --help` loads no command at all (`python -m proxy` starts in a fraction of the time
importing every command took).

Exit status: what the command returns; 2 for a usage error (argparse's convention). The
requester/approver commands (`proxy/commands`) document theirs in `--help`: 0 done, 1 refused by
the server, 2 usage or configuration, 3 server unreachable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any, TypeAlias, cast

from proxy import __version__, native

Run = Callable[[argparse.Namespace], int]
AddArguments = Callable[[argparse.ArgumentParser], None]

COMMANDS_PACKAGE = "proxy.commands"
# Wraps the run functions of API clients (`client=True`): builds the client, maps failures.
CLIENT_WRAPPER = ("proxy.commands.transport", "cli_command")


@dataclass(frozen=True, slots=True)
class Command:
    words: tuple[str, ...]  # e.g. ("policy", "check")
    help: str
    module: str  # under proxy.commands ("checks"), or a full name ("proxy.demo.walkthrough")
    add_arguments: str  # the module's function (parser) -> None
    run: str  # the module's function (args) -> int; (args, client) -> int if `client`
    client: bool = False  # a client of the HTTP API (the people's side)

    def load_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Import the command's module and add its arguments to `parser`."""
        add = cast(AddArguments, getattr(self._module(), self.add_arguments))
        add(parser)

    def execute(self, args: argparse.Namespace) -> int:
        """Import the command's module and run the command."""
        function: Any = getattr(self._module(), self.run)
        if self.client:
            function = getattr(import_module(CLIENT_WRAPPER[0]), CLIENT_WRAPPER[1])(function)
        return cast(Run, function)(args)

    @property
    def module_name(self) -> str:
        return self.module if "." in self.module else f"{COMMANDS_PACKAGE}.{self.module}"

    def _module(self) -> Any:
        return import_module(self.module_name)


GROUPS: dict[tuple[str, ...], str] = {
    ("policy",): "work with the policy file",
    ("config",): "work with the server config file",
    ("tls",): "TLS certificates",
    ("token",): "API tokens (on the server host, against its state store)",
    ("audit",): "work with the audit log",
    ("store",): "work with the state store",
}

COMMANDS: tuple[Command, ...] = (
    Command(("serve",), "run the pgwarden proxy (Postgres listener) until SIGTERM",
            "serve", "add_arguments", "run"),
    Command(("policy", "check"), "validate a policy file and summarise it",
            "checks", "add_policy_check_arguments", "run_policy_check"),
    Command(("config", "check"), "validate a server config file and summarise it",
            "checks", "add_file_argument", "run_config_check"),
    Command(("tls", "dev-cert"),
            "make a throwaway CA and server certificate for trying TLS (not for production)",
            "devcert", "add_arguments", "run"),
    Command(("demo",), "a guided walkthrough on a throwaway local PostgreSQL (make demo)",
            "proxy.demo.walkthrough", "add_arguments", "run"),
    Command(("audit", "verify"),
            "check that the audit log is whole and untampered (exit 0 only if it verifies)",
            "audit_verify", "add_arguments", "run"),
    Command(("audit", "archive"),
            "move old rotated audit files to DIR, leaving a signed anchor in the log",
            "audit_archive", "add_arguments", "run"),
    Command(("token", "create"), "create an API token for a policy user and print it once",
            "tokens", "add_create_arguments", "run_create"),
    Command(("token", "list"), "list API tokens (never their secrets)",
            "tokens", "add_common", "run_list"),
    Command(("token", "revoke"), "revoke an API token",
            "tokens", "add_revoke_arguments", "run_revoke"),
    Command(("store", "migrate"),
            "copy a SQLite state into the config's (empty) PostgreSQL store, and check it",
            "store_migrate", "add_arguments", "run"),
    # The people's side: clients of the HTTP API (PGWARDEN_URL, PGWARDEN_TOKEN or a sign-in).
    Command(("login",), "sign in with your organization's identity provider (single sign-on)",
            "login", "add_login_arguments", "run_login"),
    Command(("logout",), "sign out: end your session at the server and forget it here",
            "login", "add_logout_arguments", "run_logout"),
    Command(("targets",), "list what you may request: levels, limits, approvers, auto-approval",
            "overview", "add_arguments", "run_targets", client=True),
    Command(("status",), "show your active grants (with time left) and pending requests",
            "overview", "add_arguments", "run_status", client=True),
    Command(("request",), "ask for time-boxed access to a target",
            "requests", "add_request", "run_request", client=True),
    Command(("requests",), "list the requests you can see",
            "requests", "add_requests", "run_requests", client=True),
    Command(("show",), "show one request with its approvals and history",
            "requests", "add_id", "run_show", client=True),
    Command(("approve",), "approve a request", "requests", "add_approve", "run_approve",
            client=True),
    Command(("deny",), "deny a request", "requests", "add_deny", "run_deny", client=True),
    Command(("cancel",), "withdraw your pending request", "requests", "add_id", "run_cancel",
            client=True),
    Command(("revoke",), "end an active grant now (its sessions end too)",
            "requests", "add_revoke", "run_revoke", client=True),
    Command(("credentials",), "get a temporary password for an active grant",
            "access", "add_credentials", "run_credentials", client=True),
    Command(("psql",), "run psql with a fresh credential for an active grant",
            "access", "add_psql", "run_psql", client=True),
    Command(("sessions",), "list the live sessions you can see",
            "access", "add_sessions", "run_sessions", client=True),
    Command(("kill",), "end a live session (admins and approvers)",
            "access", "add_kill", "run_kill", client=True),
)  # fmt: skip


class CommandParser(argparse.ArgumentParser):
    """The parser of one subcommand (or group): a subcommand's arguments are added, and so its
    module imported, the first time this parser parses or shows its help."""

    def __init__(self, *args: Any, command: Command | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._command = command
        if command is not None:
            self.set_defaults(run=command.execute)

    def add_command_arguments(self) -> None:
        """Add the subcommand's arguments now (once)."""
        command, self._command = self._command, None
        if command is not None:
            command.load_arguments(self)

    # typeshed's overloads of parse_known_args only narrow the namespace's type; the parent
    # parser calls this one as parse_known_args(args, None).
    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self.add_command_arguments()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.add_command_arguments()
        return super().format_usage()

    def format_help(self) -> str:
        self.add_command_arguments()
        return super().format_help()


Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgwarden", description="Just-in-time access gateway for PostgreSQL."
    )
    parser.add_argument(
        "--version", action="version", version=f"pgwarden {__version__}, {native.describe()}"
    )
    groups: dict[tuple[str, ...], Subcommands] = {(): _subcommands(parser)}
    for command in commands:
        for depth in range(1, len(command.words)):
            _group(groups, command.words[:depth])
        *prefix, last = command.words
        groups[tuple(prefix)].add_parser(
            last, help=command.help, description=command.help, command=command
        )
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> Subcommands:
    return parser.add_subparsers(metavar="COMMAND", required=True, parser_class=CommandParser)


def _group(groups: dict[tuple[str, ...], Subcommands], words: tuple[str, ...]) -> None:
    if words in groups:
        return
    help_text = GROUPS.get(words, "")
    parser = groups[words[:-1]].add_parser(words[-1], help=help_text, description=help_text)
    groups[words] = _subcommands(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        print("pgwarden: interrupted", file=sys.stderr)
        return 130
    return status
