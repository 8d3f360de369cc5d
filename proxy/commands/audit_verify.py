"""`pgwarden audit verify [PATH] [--archive DIR]... [--allow-missing REPLICA]... (--key-env VAR |
--key-file FILE | --config F)`.

Checks every file of the audit log and its head (`verify.py`). A log whose oldest files were
archived (`pgwarden audit archive`) verifies from its anchor; with `--archive DIR` the archived
files in DIR are verified with the log as one chain from seq 1. The key is read the way the
server reads it (a `SecretRef`: the variable's value, or the file's text without its final
newline); with `--config` it comes from the server config's `audit.hmac_key_*`, and PATH may be
left out to verify the configured `paths.audit_log` and every worker's chain beside it
(`audit.worker1.jsonl`, ...; one line per chain, and all must verify): those found, and those
the primary's log says were started (a deleted worker chain fails); and the token commands'
chain (`audit.commands.jsonl`) when there is one.

With a PostgreSQL state store the chains are replicas' (`audit.a.jsonl`, `audit.a.worker1.jsonl`,
...): `--config` without PATH verifies every replica's chains in the configured directory and
requires a chain of every replica the store's registry knows, unless `--allow-missing REPLICA`
excuses it (`audit_replicas.py`). A PATH that names no file of its own but has replicas' chains
named after it (`audit.jsonl` in a directory the chains were shipped to) verifies them all the
same; without `--config` the registry is not read, and the output says so.

Prints `ok: N records in F files, head seq S` on stdout and exits 0 when everything verifies;
prints `FAILED: FILE:LINE: seq N: what is wrong` on stderr and exits 1 when the log does not
verify (or a chain is missing); exits 2 when the log, the key or the registry cannot be read
(or on a usage error).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from proxy.audit.records import (
    chains_beside,
    commands_audit_path,
    load_key,
    log_files,
    worker_audit_path,
    worker_audit_paths,
)
from proxy.audit.verify import VerifyReport, VerifyUnreadable, verify, worker_of
from proxy.commands.audit_replicas import Expected, Line, verify_replicas
from proxy.config import MAX_WORKERS, ConfigError, ServerConfig, StateBackend, load_config
from proxy.policy.models import SecretRef, SecretUnavailable

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_UNREADABLE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", type=Path, nargs="?", metavar="PATH", help="the audit log (the active file)"
    )
    parser.add_argument(
        "--archive", type=Path, action="append", default=[], metavar="DIR",
        help="verify the files `pgwarden audit archive` moved to DIR together with the log, as "
        "one chain from its first record (repeat for several directories)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-missing", action="append", default=[], metavar="REPLICA",
        help="do not fail when the registered replica REPLICA has no audit chain (a host lost "
        "with its disk; repeat for several)",
    )  # fmt: skip
    add_key_arguments(parser)


def add_key_arguments(parser: argparse.ArgumentParser) -> None:
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-env", metavar="VAR", help="read the HMAC key from this variable")
    key.add_argument("--key-file", type=Path, metavar="FILE", help="read the HMAC key from FILE")
    key.add_argument("--config", type=Path, metavar="FILE", help="use the server config's key")


class SourceUnreadable(Exception):
    """The config, the key or the log's path cannot be had; the message says which."""


@dataclass(frozen=True, slots=True)
class Source:
    """What to verify (or archive), from PATH and the key arguments."""

    path: Path  # the log: given, or the configured `paths.audit_log`
    key: bytes
    every_chain: bool  # with --config and no PATH: every process's chain beside it
    config: ServerConfig | None = None

    def replicas(self) -> bool:
        """Whether the chains are replicas' (`audit_replicas.py`): the configured store is
        PostgreSQL's, or PATH has no files of its own but replicas' chains named after it."""
        if self.every_chain and self.config is not None:
            return self.config.state.backend is StateBackend.POSTGRES
        return not log_files(self.path) and any(c.replica for c in chains_beside(self.path))


def log_and_key(args: argparse.Namespace) -> Source:
    """The log and its key from PATH and the key arguments (`--config` without PATH: every
    process's chain beside the configured log)."""
    path: Path | None = args.path
    config = None
    try:
        if args.config is not None:
            config = load_config(args.config)
            ref = config.audit.hmac_key
            path = path or config.paths.audit_log
        else:
            ref = SecretRef(env=args.key_env, file=args.key_file)
        if path is None:
            raise SourceUnreadable("give the audit log's PATH (or --config)")
        return Source(path, load_key(ref), config is not None and args.path is None, config)
    except ConfigError as exc:
        raise SourceUnreadable("; ".join(str(p) for p in exc.problems) or str(exc)) from exc
    except (SecretUnavailable, ValueError) as exc:
        raise SourceUnreadable(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    archives: list[Path] = args.archive
    try:
        source = log_and_key(args)
        if source.replicas():
            expected = expected_replicas(source.config)
            lines = verify_replicas(source.path, source.key, archives, expected, args.allow_missing)
        elif args.allow_missing:
            raise SourceUnreadable("--allow-missing is for the chains of a PostgreSQL store's "
                                   "replicas; these are not")  # fmt: skip
        elif source.every_chain:
            lines = _verify_all(source.path, source.key, archives)
        else:
            lines = [_line(verify(source.path, source.key, archives=archives))]
    except (SourceUnreadable, VerifyUnreadable) as exc:
        return _unreadable(str(exc))
    for status, text in lines:
        print(text, file=sys.stdout if status == EXIT_OK else sys.stderr)
    return max((status for status, _ in lines), default=EXIT_OK)


def expected_replicas(config: ServerConfig | None) -> Expected:
    """The replicas that must have chains: the state store's registry, read (or why not)."""
    if config is None or config.state.backend is not StateBackend.POSTGRES:
        return Expected(None, note="note: no PostgreSQL state store configured (--config), so "
                        "the replica registry was not read: a replica with no chain here would "
                        "go unnoticed")  # fmt: skip
    # Here, not at the top: psycopg brings asyncio and ssl, which verifying files never needs.
    from proxy.cluster import replicas_seen  # noqa: PLC0415

    try:
        registry = replicas_seen.read_registry(_state_dsn(config), config.state.schema)
    except (SourceUnreadable, replicas_seen.RegistryUnavailable) as exc:
        note = (f"pgwarden: {exc}; the chains above were verified, but whether a replica's "
                "chain is missing is not known")  # fmt: skip
        return Expected(None, note=note, status=EXIT_UNREADABLE)
    if registry.replicas is None:
        note = (f"note: the state store {registry.where} has no replica registry yet: which "
                "replicas should have a chain here is not known")  # fmt: skip
        return Expected(None, registry.where, note=note)
    return Expected(registry.replicas, registry.where)


def _state_dsn(config: ServerConfig) -> str:
    """The state database's DSN (the registry is there), as the server reads it."""
    ref = config.state.dsn
    assert ref is not None, "the config requires dsn_env or dsn_file with postgres"
    setting = "state.dsn_env" if ref.env is not None else "state.dsn_file"
    try:
        return ref.read()
    except SecretUnavailable as exc:
        raise SourceUnreadable(f"{setting}: {exc}") from None


def _verify_all(primary: Path, key: bytes, archives: list[Path]) -> list[Line]:
    """The primary's chain, then every worker's (`proxy.workers`): those found beside it, and
    those the primary's log (or its archive anchor) says it started, which must be there."""
    commands = commands_audit_path(primary)
    command_lines = (
        [_line(verify(commands, key, archives=archives), commands)] if commands.exists() else []
    )
    if command_lines and not log_files(primary):  # tokens made before the server first ran
        return command_lines
    report = verify(primary, key, archives=archives)
    found = worker_audit_paths(primary, MAX_WORKERS)[1:]
    started = [worker_audit_path(primary, k) for k in sorted(report.workers_started)]
    workers = sorted(set(found) | set(started), key=lambda p: worker_of(p.name))
    if not workers and not command_lines:
        return [_line(report)]
    lines = [_line(report, primary), *command_lines]
    for path in workers:
        if path.exists():
            lines.append(_line(verify(path, key, archives=archives), path))
        else:
            text = (f"{path}: FAILED: missing, though {primary.name} records that worker "
                    f"{worker_of(path.name)} was started")  # fmt: skip
            lines.append((EXIT_TAMPERED, text))
    return lines


def _line(report: VerifyReport, path: Path | None = None) -> Line:
    status = EXIT_OK if report.ok else EXIT_TAMPERED
    return status, (f"{path}: " if path else "") + report.summary()


def _unreadable(message: str) -> int:
    print(f"pgwarden: {message}", file=sys.stderr)
    return EXIT_UNREADABLE
