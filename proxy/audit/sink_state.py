"""The sink's file and chain state, and the steps that change it (the caller holds the locks).

`AuditLog` (`log.py`) owns the threads, locks and futures; this class owns what is on disk: the
open file, the last seq and mac written, sizes, and the healthy/failed state. Its steps are
`open` (find the end of the chain on disk, cut a torn tail, record what was found), `emit` (one
record, one write; a partial write is cut off again), `rotate`, and the bookkeeping after an
fsync or a head write. The sink's options and its one error, `AuditUnavailable`, live here too.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from proxy import __version__
from proxy.audit.events import AuditEvent, ChainContinues, LogOpened, Recovery
from proxy.audit.fsio import FileSystem
from proxy.audit.records import FORMAT_VERSION, GENESIS, Signer, archive_path, dump_fields
from proxy.audit.records import format_ts as _ts
from proxy.audit.recovery import (
    ChainEnd,
    ChainUnreadable,
    TornPart,
    describe_torn,
    find_chain_end,
    read_head,
)
from proxy.clock import Clock
from proxy.config import FsyncPolicy
from proxy.errors import PgwardenError, Severity

_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
IO_ERROR = "58030"
DISK_FULL = "53100"
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
MIN_FILE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class SinkOptions:
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    fsync_interval: float = 0.2  # seconds, for `interval`
    head_interval: float = 1.0  # seconds between head checkpoints
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    retry_interval: float = 5.0  # seconds between attempts to resume; 0: stay failed
    recovery_scan_bytes: int = 64 * 1024 * 1024  # how far back a torn tail may reach


class AuditUnavailable(PgwardenError):
    """The audit log cannot be written, so pgwarden refuses what it would have to record."""

    severity = Severity.FATAL

    def __init__(self, detail: str, *, disk_full: bool = False) -> None:
        super().__init__(
            "pgwarden: the audit log cannot be written; new sessions and queries are refused",
            sqlstate=DISK_FULL if disk_full else IO_ERROR,
            detail=detail,
        )


class SinkState:
    def __init__(
        self, path: Path, signer: Signer, fs: FileSystem, clock: Clock, options: SinkOptions
    ) -> None:
        self.path, self.signer, self.fs, self.clock = path, signer, fs, clock
        self.max_file_bytes = options.max_file_bytes
        self.scan_limit = options.recovery_scan_bytes
        self.fd: int | None = None
        self.seq, self.prev = 0, GENESIS
        self.size = 0
        self.first_seq = 1  # of the active file: names it at rotation
        self.durable_seq = 0
        self.head_seq = 0
        self.last_sync = self.last_head = clock.monotonic()
        self.healthy = False
        self.closed = False
        self.error: str | None = None
        self.disk_full = False
        self.write_errors = 0
        self.failed_at = 0.0
        self.rotate_pending = False
        self.dir_dirty = False  # a file was created or renamed since the last directory fsync

    # -- opening and resuming ------------------------------------------------------------------

    def open(self, reason: str | None) -> None:
        """Find the chain's end on disk and continue it. `reason` None: startup; otherwise the
        log resumes after a failure and `reason` says which."""
        unacknowledged = self.durable_seq if reason is not None else None
        self.close_fd()
        try:
            end = find_chain_end(self.path, self.signer, self.scan_limit)
            head, head_note = read_head(self.path, self.signer)
            for part in end.torn:
                self.fs.truncate(part.path, part.offset)
            self.seq, self.prev = end.seq, end.mac
            lost = None
            if head is not None and head.seq > end.seq:
                lost = (end.seq + 1, head.seq)  # continue after the head: the gap stays visible
                self.seq, self.prev = head.seq, head.mac
            self.durable_seq = min(self.durable_seq, self.seq)
            self.fd = self.fs.open_append(self.path)
            self.size = self.path.stat().st_size
            self.dir_dirty = True
            self.first_seq = end.active_first_seq or self.seq + 1
            self.rotate_pending = self.size >= self.max_file_bytes
            if end.file is not None and end.file != self.path:
                self.emit_event(ChainContinues(end.file.name))
            notes = [head_note] if head_note else []
            recovery = _recovery(end, reason, lost, unacknowledged, notes)
            if recovery is not None:
                self.emit_event(recovery)
            if reason is None:
                self.emit_event(
                    LogOpened(FORMAT_VERSION, self.path.name, f"pgwarden {__version__}")
                )
        except (OSError, ChainUnreadable) as exc:
            self.fail(exc)
            return
        self.healthy, self.error, self.disk_full = True, None, False

    # -- writing -------------------------------------------------------------------------------

    def emit(self, kind: str, body: str) -> int:
        """Write one record; raises OSError (after cutting off any partial line)."""
        return self.emit_many(((kind, body),))

    def emit_many(self, records: Iterable[tuple[str, str]]) -> int:
        """Write (kind, members) records with one write; returns the last seq. Raises OSError
        (after cutting off any partial line: then none of them is written)."""
        assert self.fd is not None
        data, seq, prev = self.signer.lines(self.seq, _ts(self.clock.now()), records, self.prev)
        if not data:
            return self.seq
        try:
            self.fs.write_all(self.fd, data)
        except OSError:
            with contextlib.suppress(OSError):  # else the next open cuts it and says so
                self.fs.truncate(self.path, self.size)
            raise
        self.seq, self.prev = seq, prev
        self.size += len(data)
        if self.size >= self.max_file_bytes:
            self.rotate_pending = True
        return seq

    def emit_event(self, event: AuditEvent) -> int:
        return self.emit(event.kind, dump_fields(event.to_record()))

    def rotate(self) -> int:
        """Rename the full file, start the next one; returns the old descriptor to fsync."""
        assert self.fd is not None
        archive = archive_path(self.path, self.first_seq)
        if archive.exists():
            raise FileExistsError(errno.EEXIST, "rotation target exists", str(archive))
        self.fs.rename(self.path, archive)
        self.dir_dirty = True
        old = self.fd
        self.fd = self.fs.open_append(self.path)  # on failure self.fd stays the old one
        self.size, self.first_seq, self.rotate_pending = 0, self.seq + 1, False
        try:
            self.emit_event(ChainContinues(archive.name))
        except OSError:
            self.fs.close(old)
            raise
        return old

    # -- bookkeeping ---------------------------------------------------------------------------

    def synced(self, target: int, *, clear_dir: bool) -> None:
        self.durable_seq = max(self.durable_seq, target)
        self.last_sync = self.clock.monotonic()
        if clear_dir:
            self.dir_dirty = False

    def head_written(self, seq: int) -> None:
        self.head_seq, self.last_head = seq, self.clock.monotonic()

    def fail(self, exc: Exception) -> None:
        self.healthy = False
        self.write_errors += 1
        self.error = str(exc) or type(exc).__name__
        self.disk_full = isinstance(exc, OSError) and exc.errno in _DISK_FULL
        self.failed_at = self.clock.monotonic()

    def close_fd(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.fs.close(self.fd)
            self.fd = None

    def close_file(self) -> None:
        self.close_fd()
        self.closed = True


def _recovery(
    end: ChainEnd,
    reason: str | None,
    lost: tuple[int, int] | None,
    unacknowledged: int | None,
    notes: list[str],
) -> Recovery | None:
    """The recovery record for what `open` found, or None when the log was closed cleanly."""
    unclean = end.kind not in (None, "audit.closed")
    if reason is None and not (end.torn or lost or notes or unclean):
        return None
    if reason is None:
        reason = "the previous run did not close the log" if unclean else "damage found at open"
    notes += [f"cut {len(p.data)} bytes from {p.path.name} at offset {p.offset}" for p in end.torn]
    if lost is not None:
        notes.append(f"records {lost[0]}-{lost[1]} anchored by the head are missing")
    size, digest, evidence = describe_torn(end.torn)
    first: TornPart | None = end.torn[0] if end.torn else None
    return Recovery(
        reason=reason,
        file=(first.path if first else end.file or Path("")).name,
        last_seq=end.seq,
        torn_offset=first.offset if first else None,
        torn_bytes=size,
        torn_sha256=digest,
        torn_head_base64=evidence,
        lost_from_seq=lost[0] if lost else None,
        lost_to_seq=lost[1] if lost else None,
        unacknowledged_after=unacknowledged,
        notes=tuple(notes),
    )
