"""`pgwarden audit verify` of replicas' chains: every chain found, and the replicas missing.

With a PostgreSQL state store each server is a replica, and each of its processes writes a chain
named after it (`audit.a.jsonl`, `audit.a.worker1.jsonl`, `audit.a.commands.jsonl`:
`proxy.audit.records.chain_path`). Chains shipped from several hosts into one directory verify
together: each on its own (`verify`, which also requires that every `audit.opened` record name
the file: a chain cannot stand in for another replica's), each replica's workers as for one
server (those found, and those its chain says were started), each line led by its replica.

Which replicas should have a chain comes from the state store's registry (`replicas`, read by
`proxy.cluster.replicas_seen`): every replica it ever saw must have its server's chain in the
directory, unless `--allow-missing REPLICA` says that one is known to be gone (a host lost with
its disk). Without the registry (a store without one yet, a database out of reach, or no
`--config`) the chains found are still verified, and the output says that missing ones cannot be
told.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.audit.records import Chain, chains_beside, log_files
from proxy.audit.verify import VerifyUnreadable, verify

if TYPE_CHECKING:  # psycopg, under it, is imported only when the registry is read
    from proxy.cluster.replicas_seen import ReplicaSeen

EXIT_OK, EXIT_TAMPERED, EXIT_UNREADABLE = 0, 1, 2
Line = tuple[int, str]  # the exit status it calls for, and what to print


@dataclass(frozen=True, slots=True)
class Expected:
    """The replicas that must have chains (`rows`), or why that is not known (`rows` None:
    `note`, which calls for exit status `status`)."""

    rows: tuple[ReplicaSeen, ...] | None
    where: str = ""  # the registry, as messages name it
    note: str = ""
    status: int = EXIT_OK


def verify_replicas(
    audit_log: Path,
    key: bytes,
    archives: Sequence[Path],
    expected: Expected,
    allow_missing: Collection[str] = (),
) -> list[Line]:
    """One line per chain named after `audit_log`, then one per registered replica without a
    chain, then what the registry check amounted to."""
    chains = chains_beside(audit_log)
    lines: list[Line] = []
    if not chains:
        where = f"{audit_log.parent}/{audit_log.stem}.*{audit_log.suffix}"
        lines.append((EXIT_UNREADABLE, f"pgwarden: no audit chain at {where}"))
    for replica, group in itertools.groupby(chains, key=lambda chain: chain.replica):
        lines += _replica_lines(audit_log, replica, list(group), key, archives)
    return lines + _registry_lines(audit_log, chains, expected, set(allow_missing))


def _replica_lines(
    audit_log: Path, replica: str, found: list[Chain], key: bytes, archives: Sequence[Path]
) -> list[Line]:
    """Its server's chain, its workers' (found, or recorded as started) and its commands'."""
    lead = f"replica {replica}: " if replica else ""
    server = Chain(replica, False, 0)
    workers = {chain for chain in found if not chain.commands and chain.worker}
    lines: list[Line] = []
    if server in found:
        status, text, started = _verified(audit_log, server, key, archives)
        lines.append((status, lead + text))
        workers |= {Chain(replica, False, k) for k in started}
    elif workers:
        text = f"{server.path(audit_log)}: FAILED: missing, though its workers' chains are here"
        lines.append((EXIT_TAMPERED, lead + text))
    for chain in sorted(workers):
        path = chain.path(audit_log)
        if path.exists() or chain in found:
            status, text, _ = _verified(audit_log, chain, key, archives)
        else:
            status = EXIT_TAMPERED
            text = (f"{path}: FAILED: missing, though {server.path(audit_log).name} records that "
                    f"worker {chain.worker} was started")  # fmt: skip
        lines.append((status, lead + text))
    lines += [(s, lead + t) for s, t, _ in
              (_verified(audit_log, c, key, archives) for c in found if c.commands)]  # fmt: skip
    return lines


def _verified(
    audit_log: Path, chain: Chain, key: bytes, archives: Sequence[Path]
) -> tuple[int, str, frozenset[int]]:
    """(status, line, workers its records say were started) of one chain."""
    path = chain.path(audit_log)
    if not log_files(path):  # found by its head or anchor: the files themselves are gone
        text = f"{path}: FAILED: missing, though its head or anchor is here"
        return EXIT_TAMPERED, text, frozenset()
    opened_as = path.name if chain.replica else None  # replica chains were never named otherwise
    try:
        report = verify(path, key, archives=archives, opened_as=opened_as)
    except VerifyUnreadable as exc:
        return EXIT_UNREADABLE, f"{path}: cannot verify: {exc}", frozenset()
    status = EXIT_OK if report.ok else EXIT_TAMPERED
    return status, f"{path}: {report.summary()}", report.workers_started


def _registry_lines(
    audit_log: Path, chains: list[Chain], expected: Expected, allowed: set[str]
) -> list[Line]:
    if expected.rows is None:
        return [(expected.status, expected.note)]
    directory = audit_log.parent
    with_chain = {chain.replica for chain in chains if chain == Chain(chain.replica, False, 0)}
    registered = {row.id for row in expected.rows}
    lines: list[Line] = []
    for row in expected.rows:
        if row.id in with_chain:
            continue
        seen = _seen(row)
        if row.id in allowed:
            lines.append((EXIT_OK, f"replica {row.id}: no audit chain found in {directory}, "
                                   f"allowed by --allow-missing ({seen})"))  # fmt: skip
        else:
            lines.append((EXIT_TAMPERED, f"replica {row.id}: FAILED: no audit chain found in "
                                         f"{directory} ({seen})"))  # fmt: skip
    for replica in sorted(with_chain - registered - {""}):
        lines.append((EXIT_OK, f"replica {replica}: note: not in the replica registry of "
                               f"{expected.where}: from another deployment?"))  # fmt: skip
    for name in sorted(allowed - registered):
        lines.append((EXIT_OK, f"note: --allow-missing {name}: no replica {name} is registered"))
    missing = sorted(registered - with_chain)
    names = ", ".join(row.id for row in expected.rows) or "none"
    outcome = f"missing: {', '.join(missing)}" if missing else "each has its chain here"
    lines.append((EXIT_OK, f"registry: replicas {names} in {expected.where}; {outcome}"))
    return lines


def _seen(row: ReplicaSeen) -> str:
    text = f"started {_when(row.started_at)}, last seen {_when(row.heartbeat_at)}"
    return text + (f", stopped {_when(row.stopped_at)}" if row.stopped_at is not None else "")


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
