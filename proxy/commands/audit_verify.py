"""`pgwarden audit verify [PATH] (--key-env VAR | --key-file FILE | --config FILE)`.

Checks every file of the audit log and its head (`verify.py`). The key is read the way the
server reads it (a `SecretRef`: the variable's value, or the file's text without its final
newline); with `--config` it comes from the server config's `audit.hmac_key_*`, and PATH may be
left out to verify the configured `paths.audit_log` and every worker's chain beside it
(`audit.worker1.jsonl`, ...; one line per chain, and all must verify): those found, and those
the primary's log says were started (a deleted worker chain fails).

Prints `ok: N records in F files, head seq S` on stdout and exits 0 when everything verifies;
prints `FAILED: FILE:LINE: seq N: what is wrong` on stderr and exits 1 when the log does not
verify; exits 2 when the log or the key cannot be read (or on a usage error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proxy.audit.records import load_key, worker_audit_path, worker_audit_paths
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
    key = parser.add_mutually_exclusive_group(required=True)
    key.add_argument("--key-env", metavar="VAR", help="read the HMAC key from this variable")
    key.add_argument("--key-file", type=Path, metavar="FILE", help="read the HMAC key from FILE")
    key.add_argument("--config", type=Path, metavar="FILE", help="use the server config's key")


def run(args: argparse.Namespace) -> int:
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
            return _unreadable("give the audit log's PATH (or --config)")
        key = load_key(ref)
        lines = _verify_all(path, key) if every_chain else [_line(verify(path, key))]
    except ConfigError as exc:
        return _unreadable("; ".join(str(p) for p in exc.problems) or str(exc))
    except (SecretUnavailable, ValueError, VerifyUnreadable) as exc:
        return _unreadable(str(exc))
    for ok, text in lines:
        print(text, file=sys.stdout if ok else sys.stderr)
    return EXIT_OK if all(ok for ok, _ in lines) else EXIT_TAMPERED


def _verify_all(primary: Path, key: bytes) -> list[tuple[bool, str]]:
    """The primary's chain, then every worker's (`proxy.workers`): those found beside it, and
    those the primary's log says it started, which must be there."""
    report = verify(primary, key)
    found = worker_audit_paths(primary, MAX_WORKERS)[1:]
    started = [worker_audit_path(primary, k) for k in sorted(report.workers_started)]
    workers = sorted(set(found) | set(started), key=lambda p: worker_of(p.name))
    if not workers:
        return [_line(report)]
    lines = [_line(report, primary)]
    for path in workers:
        if path.exists():
            lines.append(_line(verify(path, key), path))
        else:
            lines.append((False, f"{path}: FAILED: missing, though {primary.name} records that "
                                 f"worker {worker_of(path.name)} was started"))  # fmt: skip
    return lines


def _line(report: VerifyReport, path: Path | None = None) -> tuple[bool, str]:
    return report.ok, (f"{path}: " if path else "") + report.summary()


def _unreadable(message: str) -> int:
    print(f"pgwarden: {message}", file=sys.stderr)
    return EXIT_UNREADABLE
