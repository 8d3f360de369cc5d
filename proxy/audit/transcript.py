"""Session transcripts read back from the audit log: what one proxied session ran, in order, with
each round trip's outcome; and the sessions a grant had. The web console's Sessions page.

A session's records all sit in one chain (one process ran it): `session.started`, then one
record per round trip (`query.batch`, `query.function_call`; formats 1 and 2: one per Query,
Parse, Bind, Execute), `query.copy` for the data of a COPY, outcomes in the `done` list of later
records (`query_events.py`; formats 1 and 2: `query.outcome`), and `session.ended`.
`read_transcript` reads forward to the start record, then on through the later files of the
same chain up to the end record. An outcome that never came is explained: the session is still
running, or its run stopped first (a later `audit.opened` of the chain: pgwarden was restarted,
and lost what it had not written), or the scan stopped before it could be seen.

Reading, not verifying: lines are found by substring (`line_scan.py`) and decoded; their MACs and
the chain are `pgwarden audit verify`'s to check. What is shown is what was recorded — redacted
when written (`redact.py`), cut at the configured sizes — never more. Pure reading, no asyncio:
the console calls it from a thread pool.

Bounds: at most `max_statements` entries are kept (`truncated`, and how many more were seen);
at most `max_bytes_scanned` bytes read (`scan_stopped`): the most recently written files that
fit in it, so that a page about a recent session or grant does not spend its budget on last
year's files; torn or garbled lines are skipped and counted; files gone since they were listed
(rotation) are skipped and counted.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from json.encoder import encode_basestring_ascii as quote
from pathlib import Path
from typing import Any, Final

from proxy.audit.line_scan import Scan, decode
from proxy.audit.records import chains_beside, log_files
from proxy.audit.transcript_entries import (
    ROUND_TRIPS,
    Entry,
    EntryKind,
    Garbled,
    NoOutcome,
    Outcome,
    Param,
    Step,
    StepAction,
    boolean,
    entry_of,
    integer,
    number,
    outcomes_of,
    queries_in,
    text,
    timestamp,
)

__all__ = [
    "DEFAULT_SESSIONS",
    "MAX_BYTES_SCANNED",
    "MAX_STATEMENTS",
    "Entry",
    "EntryKind",
    "NoOutcome",
    "Outcome",
    "Param",
    "SessionEnd",
    "SessionStart",
    "SessionState",
    "SessionSummary",
    "Step",
    "StepAction",
    "Transcript",
    "audit_files",
    "read_transcript",
    "sessions_of_grant",
]

MAX_STATEMENTS: Final = 1000  # entries kept for one page; the rest are counted
MAX_BYTES_SCANNED: Final = 256 * 1024 * 1024  # read per call at most (~a second of disk)
DEFAULT_SESSIONS: Final = 100  # sessions of one grant listed, newest first

_OPENED: Final = b'"kind":"audit.opened"'  # a new run of the chain (its writer restarted)
_STARTED: Final = b'"kind":"session.started"'
_ENDED: Final = b'"kind":"session.ended"'
_ARCHIVE_SUFFIX = re.compile(r"\.[0-9]{12}\Z")


class SessionState(StrEnum):
    ENDED = "ended"  # its end record was read
    LIVE = "live"  # no end record yet, and its process has not restarted since
    CUT_SHORT = "cut_short"  # no end record: pgwarden stopped while it ran (the log was reopened)
    UNKNOWN = "unknown"  # the scan stopped (max_bytes_scanned) before its end could be seen


@dataclass(frozen=True, slots=True)
class SessionStart:
    """The session's `session.started` record."""

    session_id: str
    grant_id: str  # the request's id: one id names a request and the grant it became
    user: str
    target: str
    access_level: str
    upstream_role: str
    client_address: str
    client_tls: bool
    application_name: str
    started_at: datetime
    grant_ends_at: datetime
    backend_process_id: int
    seq: int
    log_file: str  # the file holding it: names the replica and process that ran the session


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """The session's `session.ended` record."""

    at: datetime
    reason: str  # an EndReason value: client_left, expired, revoked, ...
    detail: str
    duration: float  # seconds
    bytes_from_client: int
    bytes_to_client: int
    queries: int  # Query, Execute and FunctionCall messages the session sent


@dataclass(frozen=True, slots=True)
class Transcript:
    start: SessionStart
    end: SessionEnd | None
    state: SessionState
    entries: tuple[Entry, ...]  # in the order sent
    truncated: bool  # more entries than max_statements: the first ones are kept
    entries_omitted: int  # round trips seen past max_statements
    scan_stopped: bool  # max_bytes_scanned reached: later records were not read
    bytes_scanned: int
    skipped_lines: int  # torn or garbled lines of the session, left out
    missing_files: int  # files gone between listing and reading (a rotation)


@dataclass(frozen=True, slots=True)
class SessionSummary:
    start: SessionStart
    end: SessionEnd | None
    state: SessionState
    queries: int | None  # as SessionEnd.queries; counted from its records while it runs


def audit_files(audit_log: Path) -> list[Path]:
    """Every audit file beside the configured log `audit_log` (`paths.audit_log`: the files
    are named after it), in the order to read them: chain by chain (replica, then process: the
    server's own, its workers', the token commands'), each chain's rotated files oldest first
    and then its active file."""
    return [file for chain in chains_beside(audit_log) for file in log_files(chain.path(audit_log))]


def read_transcript(
    paths: Sequence[Path],
    session_id: str,
    *,
    max_statements: int = MAX_STATEMENTS,
    max_bytes_scanned: int = MAX_BYTES_SCANNED,
) -> Transcript | None:
    """Session `session_id`'s transcript from `paths` (in `audit_files` order); None if its start
    record is not in the files read (no such session, its file was archived, or it is older than
    the newest max_bytes_scanned of the log)."""
    scan = Scan(max_bytes_scanned)
    sid = b'"session_id":' + quote(session_id).encode("ascii")
    needles = (sid, _OPENED)
    reading: _Reading | None = None
    for path in _newest(paths, scan):
        resume = 0
        if reading is None:  # one needle until the start is found: half the searching
            reading, resume = _find_start(scan, path, _STARTED + b"," + sid, max_statements)
            if reading is None:
                continue
        elif _chain(path) != reading.chain:
            continue  # one process ran the session: its records are all in one chain
        for _, line in scan.lines(path, needles, resume):
            reading.see(line, scan)
            if reading.over:
                break
        if reading.over:
            break
    return None if reading is None else reading.transcript(scan)


def sessions_of_grant(
    paths: Sequence[Path],
    grant_id: str,
    *,
    limit: int = DEFAULT_SESSIONS,
    max_bytes_scanned: int = MAX_BYTES_SCANNED,
) -> list[SessionSummary]:
    """The sessions whose start record names grant (request) `grant_id`, newest first: at most
    `limit` of them, the newest, among the newest max_bytes_scanned of the log."""
    scan = Scan(max_bytes_scanned)
    sessions = _Sessions(limit)
    needles = (b'"grant_id":' + quote(grant_id).encode("ascii"), _ENDED, _OPENED)
    files = _newest(paths, scan)
    for index, path in enumerate(files):
        for offset, line in scan.lines(path, needles):
            sessions.see(line, path, (index, offset), scan)
    counts = _count_live(scan, files, sessions)
    rows = sorted(sessions.rows.values(), key=lambda row: row.start.started_at, reverse=True)
    return [row.summary(scan.stopped, counts.get(row.start.session_id)) for row in rows]


def _newest(paths: Sequence[Path], scan: Scan) -> list[Path]:
    """The files to read, in their given order: the most recently written ones that fit in the
    scan's budget together (at least one), so that a large log is read where recent sessions
    are. Within a chain a later file is never written before an earlier one, so what is left
    out of each chain is its oldest files."""
    found: list[tuple[int, int, int]] = []  # (last written, index, size)
    for index, path in enumerate(paths):
        try:
            facts = path.stat()
        except FileNotFoundError:  # renamed by a rotation, or archived, since it was listed
            scan.missing_files += 1
            continue
        found.append((facts.st_mtime_ns, index, facts.st_size))
    chosen: list[int] = []
    total = 0
    for _, index, size in sorted(found, reverse=True):
        if chosen and total + size > scan.budget:
            break
        chosen.append(index)
        total += size
    return [paths[index] for index in sorted(chosen)]


# -- reading one session ---------------------------------------------------------------------


def _find_start(
    scan: Scan, path: Path, needle: bytes, max_statements: int
) -> tuple[_Reading | None, int]:
    """The session's reading from its start record in `path`, if there, and where it ends."""
    for offset, line in scan.lines(path, (needle,)):
        try:
            start = _start(decode(line), path.name)
        except Garbled:
            scan.skipped_lines += 1
            continue
        return _Reading(start, _chain(path), max_statements), offset + len(line)
    return None, 0


class _Reading:
    """One session's records, read in order (see the module docstring)."""

    def __init__(self, start: SessionStart, chain: Path, max_statements: int) -> None:
        self.start = start
        self.chain = chain
        self.max_statements = max_statements
        self.entries: list[Entry] = []
        self.kept: set[int] = set()  # the round trips kept, by n
        self.outcomes: dict[int, Outcome] = {}  # theirs
        self.truncated = False
        self.omitted = 0
        self.reopened_at: int | None = None  # seq of the chain's first audit.opened after start
        self.end: SessionEnd | None = None

    @property
    def over(self) -> bool:
        """Nothing later can be the session's: it ended, or its run did (a new one began)."""
        return self.end is not None or self.reopened_at is not None

    def see(self, line: bytes, scan: Scan) -> None:
        body = decode(line)
        try:
            if body is None:
                raise Garbled("not a JSON object")
            self._record(body)
        except Garbled:
            scan.skipped_lines += 1

    def _record(self, body: dict[str, Any]) -> None:
        kind, seq = body.get("kind"), body.get("seq")
        if not isinstance(seq, int) or seq < self.start.seq:
            return
        if kind == "audit.opened":
            self.reopened_at = seq if self.reopened_at is None else self.reopened_at
            return
        if body.get("session_id") != self.start.session_id:
            return
        if kind == "session.ended":
            self.end = _end(body)
            return
        entry, outcomes = entry_of(body), outcomes_of(body)  # both parsed before either is kept
        self.outcomes.update((o.n, o) for o in outcomes if o.n in self.kept)
        if entry is None:
            return
        if len(self.entries) < self.max_statements:
            self.entries.append(entry)
            if entry.kind in ROUND_TRIPS:
                self.kept.add(entry.n)
            return
        self.truncated = True
        self.omitted += entry.kind in ROUND_TRIPS

    def transcript(self, scan: Scan) -> Transcript:
        state = _state(self.end, self.reopened_at is not None, scan.stopped)
        entries = tuple(self._finished(entry, scan.stopped) for entry in self.entries)
        return Transcript(
            self.start, self.end, state, entries, self.truncated, self.omitted,
            scan.stopped, scan.scanned, scan.skipped_lines, scan.missing_files,
        )  # fmt: skip

    def _finished(self, entry: Entry, stopped: bool) -> Entry:
        if entry.kind not in ROUND_TRIPS:
            return entry
        if (outcome := self.outcomes.get(entry.n)) is not None:
            return entry.settled(outcome)
        if not entry.outcome_expected:
            return entry
        reopened = self.reopened_at is not None and self.reopened_at > entry.seq
        if self.end is not None or reopened:
            return entry.unsettled(NoOutcome.LOST)
        return entry.unsettled(NoOutcome.NOT_READ if stopped else NoOutcome.RUNNING)


def _state(end: SessionEnd | None, reopened: bool, stopped: bool) -> SessionState:
    if end is not None:
        return SessionState.ENDED
    if reopened:
        return SessionState.CUT_SHORT
    return SessionState.UNKNOWN if stopped else SessionState.LIVE


def _chain(path: Path) -> Path:
    """The chain a file belongs to: its active file's path (a rotated file's name adds the
    12-digit seq of its first record, `records.archive_path`)."""
    return path.with_name(_ARCHIVE_SUFFIX.sub("", path.name))


# -- the sessions of a grant -----------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    start: SessionStart
    chain: Path
    at: tuple[int, int]  # (index in paths, offset) of its start record
    end: SessionEnd | None = None
    cut_short: bool = False

    def summary(self, stopped: bool, counted: int | None) -> SessionSummary:
        state = _state(self.end, self.cut_short, stopped)
        queries = self.end.queries if self.end is not None else counted
        return SessionSummary(self.start, self.end, state, queries)


class _Sessions:
    """The newest `limit` sessions of a grant seen so far, and what became of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: dict[str, _Row] = {}
        self._oldest: list[tuple[datetime, str]] = []  # heap of the rows' starts

    def see(self, line: bytes, path: Path, at: tuple[int, int], scan: Scan) -> None:
        if not (_OPENED in line or _STARTED in line or _ENDED in line):
            return  # the grant's other records: requests, approvals, credentials
        body = decode(line)
        try:
            if body is None:
                raise Garbled("not a JSON object")
            self._record(body, path, at)
        except Garbled:
            scan.skipped_lines += 1

    def _record(self, body: dict[str, Any], path: Path, at: tuple[int, int]) -> None:
        kind, chain = body.get("kind"), _chain(path)
        if kind == "audit.opened":  # what ran in this chain without an end was cut short
            for row in self.rows.values():
                row.cut_short = row.cut_short or (row.chain == chain and row.end is None)
        elif kind == "session.started":
            self._add(_Row(_start(body, path.name), chain, at))
        elif kind == "session.ended":
            ended = self.rows.get(str(body.get("session_id")))
            if ended is not None and ended.chain == chain:
                ended.end = _end(body)

    def _add(self, row: _Row) -> None:
        self.rows[row.start.session_id] = row
        heapq.heappush(self._oldest, (row.start.started_at, row.start.session_id))
        while len(self.rows) > self.limit:
            self.rows.pop(heapq.heappop(self._oldest)[1], None)


def _count_live(scan: Scan, paths: Sequence[Path], sessions: _Sessions) -> dict[str, int]:
    """Queries of the sessions with no end record, counted from their records (from each one's
    start record on, in its chain)."""
    live = [row for row in sessions.rows.values() if row.end is None]
    if not live:
        return {}
    counts = {row.start.session_id: 0 for row in live}
    first = min(row.at for row in live)
    chains = {row.chain for row in live}
    needles = [b'"session_id":' + quote(sid).encode("ascii") for sid in counts]
    for index in range(first[0], len(paths)):
        if _chain(paths[index]) not in chains:
            continue
        at = first[1] if index == first[0] else 0
        for _, line in scan.lines(paths[index], needles, at):
            body = decode(line)
            if body is not None and (sid := body.get("session_id")) in counts:
                counts[sid] += queries_in(body)
    return counts


# -- the session records ---------------------------------------------------------------------


def _start(body: dict[str, Any] | None, log_file: str) -> SessionStart:
    """The facts of a `session.started` record; Garbled if it is not one."""
    if body is None or body.get("kind") != "session.started":
        raise Garbled("not a session start")
    return SessionStart(
        text(body, "session_id"), text(body, "grant_id"), text(body, "user"),
        text(body, "target"), text(body, "access_level"), text(body, "upstream_role"),
        text(body, "client_address"), boolean(body, "client_tls"),
        text(body, "application_name"), timestamp(body, "started_at"),
        timestamp(body, "grant_ends_at"), integer(body, "backend_process_id"),
        integer(body, "seq"), log_file,
    )  # fmt: skip


def _end(body: dict[str, Any]) -> SessionEnd:
    return SessionEnd(
        timestamp(body, "ts"), text(body, "reason"), text(body, "detail"),
        number(body, "duration"), integer(body, "bytes_from_client"),
        integer(body, "bytes_to_client"), integer(body, "queries"),
    )  # fmt: skip
