"""`pgwarden audit verify [PATH] [--archive DIR]... (--key-env VAR | --key-file FILE | --config F)`.

Checks every file of the audit log and its head (`verify.py`). A log whose oldest files were
archived (`pgwarden audit archive`) verifies from its anchor; with `--archive DIR` the archived
files in DIR are verified with the log as one chain from seq 1. The key is read the way the
server reads it (a `SecretRef`: the variable's value, or the file's text without its final
newline); with `--config` it comes from the server config's `audit.hmac_key_*`, and PATH may be
left out to verify the configured `paths.audit_log` and every worker's chain beside it
(`audit.worker1.jsonl`, ...; one line per chain, and all must verify): those found, and those
the primary's log says were started (a deleted worker chain fails); and the token commands'
chain (`audit.commands.jsonl`) when there is one.

Prints `ok: N records in F files, head seq S` on stdout and exits 0 when everything verifies;
prints `FAILED: FILE:LINE: seq N: what is wrong` on stderr and exits 1 when the log does not
verify; exits 2 when the log or the key cannot be read (or on a usage error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proxy.audit.records import (
    commands_audit_path,
    load_key,
    log_files,
    worker_audit_path,
    worker_audit_paths,
)
from proxy.audit.verify import VerifyReport, VerifyUnreadable, verify, worker_of
from proxy.config import MAX_WORKERS, ConfigError, load_config
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
    add_key_arguments(parser)


def add_key_arguments(parser: argparse.ArgumentParser) -> None:
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-env", metavar="VAR", help="read the HMAC key from this variable")
    key.add_argument("--key-file", type=Path, metavar="FILE", help="read the HMAC key from FILE")
    key.add_argument("--config", type=Path, metavar="FILE", help="use the server config's key")


class SourceUnreadable(Exception):
    """The config, the key or the log's path cannot be had; the message says which."""


def log_and_key(args: argparse.Namespace) -> tuple[Path, bytes, bool]:
    """(the log, its key, whether to take every worker's chain beside it: with --config and no
    PATH) from PATH and the key arguments."""
    path: Path | None = args.path
    try:
        if args.config is not None:
            config = load_config(args.config)
            ref = config.audit.hmac_key
            every_chain = path is None
            path = path or config.paths.audit_log
        else:
            ref = SecretRef(env=args.key_env, file=args.key_file)
            every_chain = False
        if path is None:
            raise SourceUnreadable("give the audit log's PATH (or --config)")
        return path, load_key(ref), every_chain
    except ConfigError as exc:
        raise SourceUnreadable("; ".join(str(p) for p in exc.problems) or str(exc)) from exc
    except (SecretUnavailable, ValueError) as exc:
        raise SourceUnreadable(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    archives: list[Path] = args.archive
    try:
        path, key, every_chain = log_and_key(args)
        if every_chain:
            lines = _verify_all(path, key, archives)
        else:
            lines = [_line(verify(path, key, archives=archives))]
    except (SourceUnreadable, VerifyUnreadable) as exc:
        return _unreadable(str(exc))
    for ok, text in lines:
        print(text, file=sys.stdout if ok else sys.stderr)
    return EXIT_OK if all(ok for ok, _ in lines) else EXIT_TAMPERED


def _verify_all(primary: Path, key: bytes, archives: list[Path]) -> list[tuple[bool, str]]:
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
            lines.append((False, f"{path}: FAILED: missing, though {primary.name} records that "
                                 f"worker {worker_of(path.name)} was started"))  # fmt: skip
    return lines


def _line(report: VerifyReport, path: Path | None = None) -> tuple[bool, str]:
    return report.ok, (f"{path}: " if path else "") + report.summary()


def _unreadable(message: str) -> int:
    print(f"pgwarden: {message}", file=sys.stderr)
    return EXIT_UNREADABLE
