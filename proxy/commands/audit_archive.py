"""`pgwarden audit archive --to DIR (--keep N | --before DATE) [PATH] (--key-env VAR | ...)`.

Moves the oldest rotated files of the audit log to DIR and leaves a signed anchor beside the log,
so that what remains verifies on its own (`pgwarden audit verify`) and DIR plus the log verify
together (`pgwarden audit verify --archive DIR`). The steps, and why a kill at any of them loses
nothing, are in `proxy/audit/archiving.py`; running the command again finishes the work.

`--keep N` leaves the N newest rotated files; `--before DATE` archives only files whose last
record is older than DATE (ISO 8601, UTC unless it says otherwise); with both, a file must pass
both. The file being written is never archived. The key and PATH are read as `audit verify`
reads them; with `--config` and no PATH every worker's chain is archived too, and with a
PostgreSQL store every chain of every replica found beside the configured log (each chain on
its own: its files and anchor carry its name, so the chains of several replicas may share DIR).

Prints one line per chain on stdout and exits 0 when done (or when there is nothing to archive);
exits 1 when a chain does not verify (nothing of it is archived); 2 when the log, the key or DIR
cannot be used (or on a usage error).
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from datetime import UTC, datetime
from pathlib import Path

from proxy.audit.archive import anchor_path
from proxy.audit.archiving import (
    ArchiveRefused,
    ArchiveResult,
    Archivist,
    ChainBroken,
    archive_chain,
)
from proxy.audit.records import chains_beside, worker_audit_paths
from proxy.audit.verify import VerifyUnreadable, verify
from proxy.clock import SYSTEM_CLOCK
from proxy.commands.audit_verify import (
    EXIT_OK,
    EXIT_TAMPERED,
    EXIT_UNREADABLE,
    Source,
    SourceUnreadable,
    add_key_arguments,
    log_and_key,
)
from proxy.config import MAX_WORKERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", type=Path, nargs="?", metavar="PATH", help="the audit log (the active file)"
    )
    parser.add_argument("--to", type=Path, required=True, dest="destination", metavar="DIR",
                        help="where the archived files go (created if missing; not the log's "
                        "own directory)")  # fmt: skip
    parser.add_argument("--keep", type=_count, metavar="N", help="keep the N newest rotated files")
    parser.add_argument("--before", type=_date, metavar="DATE",
                        help="archive only files whose last record is older than DATE")  # fmt: skip
    add_key_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.keep is None and args.before is None:
        return _fail("pgwarden: say which files to archive: --keep N (rotated files to keep) "
                     "or --before DATE", EXIT_UNREADABLE)  # fmt: skip
    try:
        source = log_and_key(args)
    except SourceUnreadable as exc:
        return _fail(f"pgwarden: {exc}", EXIT_UNREADABLE)
    archivist, key = _archivist(), source.key
    status = EXIT_OK
    for chain in _chains(source):
        try:
            result = archive_chain(
                chain, key, args.destination, keep=args.keep, before=args.before,
                clock=SYSTEM_CLOCK, archivist=archivist,
            )  # fmt: skip
            print(f"{chain}: {_describe(result, args.destination)}")
            rest = verify(chain, key)
        except ChainBroken as exc:
            status = max(status, _fail(f"FAILED: {exc}", EXIT_TAMPERED))
            continue
        except (ArchiveRefused, VerifyUnreadable, OSError) as exc:
            status = max(status, _fail(f"pgwarden: {chain}: {exc}", EXIT_UNREADABLE))
            continue
        if not rest.ok:  # what is left no longer verifies: say so loudly
            status = max(status, _fail(f"{chain}: {rest.summary()}", EXIT_TAMPERED))
    return status


def _chains(source: Source) -> list[Path]:
    """The chains to archive: every replica's found (`audit_replicas.py`), every worker's of one
    server (with --config and no PATH), or the one named."""
    if source.replicas():
        return [chain.path(source.path) for chain in chains_beside(source.path)]
    return worker_audit_paths(source.path, MAX_WORKERS) if source.every_chain else [source.path]


def _describe(result: ArchiveResult, destination: Path) -> str:
    done = []
    if result.finished:
        done.append(f"finished an archive cut short ({len(result.finished)} file(s) removed)")
    if result.anchor is not None:
        anchor = result.anchor
        done.append(
            f"archived {len(result.archived)} file(s), records {anchor.start_seq}-{anchor.seq}, "
            f"to {destination}; the log continues from {anchor_path(Path(anchor.chain)).name}"
        )
    else:
        done.append("nothing to archive")
    return "; ".join(done) + f" ({result.kept} rotated file(s) kept)"


def _archivist() -> Archivist:
    """The OS user the command runs as (and, under sudo, who ran sudo) and the host."""
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no passwd entry (containers)
        user = f"uid {uid}"
    if (sudo := os.environ.get("SUDO_USER")) and sudo != user:
        user += f" (sudo by {sudo})"
    return Archivist(user, os.uname().nodename)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count of files: {text!r}")
    return int(text)


def _date(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date: {text!r} (use 2026-01-31 or 2026-01-31T12:00:00Z)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _fail(message: str, status: int) -> int:
    print(message, file=sys.stderr)
    return status
