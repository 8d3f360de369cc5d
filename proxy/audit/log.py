"""The audit sink: appends MAC-chained records, makes them durable, rotates, fails closed.

`append(event)` redacts the event and writes its line with one `write` under a lock (callers on
the event loop and on executor threads are serialised; the kernel's page cache takes the write,
so the loop does not wait for the disk); `append_many(events)` writes several records with one
`write` (the query records come already encoded and redacted: `EncodedRecord`). Both return a
ticket, the (last) record's `seq`. Durability is the background thread's job, per the fsync
policy:

- `always`: group commit. The thread fsyncs as soon as records are waiting; every record written
  before an fsync starts is covered by it, so a burst of appends shares one fsync.
  `durable(ticket)` is a `concurrent.futures.Future` that completes once an fsync covers the
  record (asyncio code awaits it with `asyncio.wrap_future`); `wait_durable` blocks for it.
- `interval`: the thread fsyncs every `fsync_interval`; `durable()` completes at once.
- `never`: no fsync per record; only the head checkpoint (below) fsyncs.

The head (`<log>.head`: last durable seq and mac) is replaced atomically every `head_interval`,
at rotation and at close, always *after* an fsync that covers it, so a head never anchors a
record that a power loss could take away. Rotation (the thread, once the file reaches
`max_file_bytes`; a burst written before the thread gets to it may overshoot) renames the file to
`<log>.<first seq>` and starts a new one whose first record (`audit.chain_continues`) chains to
the last of the old.

Failure (fail closed, SECURITY.md row 41): any error writing, fsyncing, rotating or writing the
head puts the log in the failed state: `healthy` is False, `write_errors` counts, every pending
and later `append`/`durable` raises `AuditUnavailable` (53100 disk_full, else 58030 io_error).
A partial line is cut off again if possible. Every `retry_interval` the thread tries to resume:
it re-reads the end of the chain *from disk* (after a failed fsync the page cache cannot be
trusted), cuts a torn tail, and appends an `audit.recovery` record naming the last record whose
durability was confirmed; only if that record is written and fsynced is the log healthy again.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from proxy.audit.encode import EncodedRecord, event_members
from proxy.audit.events import AuditEvent
from proxy.audit.fsio import FileSystem
from proxy.audit.records import Signer, format_ts, head_path
from proxy.audit.redact import Redactor
from proxy.audit.sink_state import (
    MIN_FILE_BYTES,
    AuditUnavailable,
    SinkOptions,
    SinkState,
)
from proxy.clock import Clock
from proxy.config import FsyncPolicy

__all__ = ["AuditLog", "AuditUnavailable", "FsyncPolicy", "SinkOptions"]

_MAX_WAIT = 1.0  # the thread re-checks its clocks at least this often


class AuditLog:
    """The sink (see the module docstring). Thread-safe; `close()` it at shutdown."""

    def __init__(
        self,
        path: Path,
        key: bytes,
        *,
        clock: Clock,
        options: SinkOptions = SinkOptions(),  # noqa: B008 - frozen
        redactor: Redactor | None = None,
        fs: FileSystem | None = None,
    ) -> None:
        if options.max_file_bytes < MIN_FILE_BYTES:
            raise ValueError(f"max_file_bytes must be at least {MIN_FILE_BYTES}")
        self.path = path
        self._options = options
        self._clock = clock
        self._redactor = redactor or Redactor()
        self._lock = threading.Lock()  # the chain and the file: held for each write
        self._io = threading.Lock()  # fsync / rotation / head sequences (taken before _lock)
        self._wake = threading.Condition(self._lock)
        self._waiters: list[tuple[int, int, Future[None]]] = []
        self._order = itertools.count()
        self._s = SinkState(path, Signer(key), fs or FileSystem(), clock, options)
        self._closing = False
        with self._io, self._lock:
            self._s.open(reason=None)
        self._checkpoint(force_head=True)
        if not self._s.healthy:
            self._s.close_fd()
            raise AuditUnavailable(self._s.error or "the audit log did not open")
        self._background = threading.Thread(target=self._run, name="pgwarden-audit", daemon=True)
        self._background.start()

    # -- what the rest of pgwarden calls -------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._s.healthy

    @property
    def write_errors(self) -> int:
        return self._s.write_errors

    @property
    def last_error(self) -> str | None:
        return self._s.error

    @property
    def last_seq(self) -> int:
        return self._s.seq

    @property
    def durable_seq(self) -> int:
        return self._s.durable_seq

    def append(self, event: AuditEvent | EncodedRecord) -> int:
        """Write the event's record now; returns its ticket (seq). Raises AuditUnavailable."""
        return self.append_many((event,))

    def append_many(self, events: Sequence[AuditEvent | EncodedRecord]) -> int:
        """Write the events' records now, in order, with one write; returns the last ticket.
        An `EncodedRecord` (the query records) is written as it is: already redacted."""
        redact = self._redactor.redact
        records = [
            event
            if isinstance(event, EncodedRecord)
            else (event.kind, event_members(event, redact))
            for event in events
        ]
        with self._lock:
            if self._s.closed or not self._s.healthy:
                raise self._unavailable()
            idle = self._s.seq <= self._s.durable_seq  # the thread may sleep up to _MAX_WAIT
            try:
                seq = self._s.emit_many(records)
            except OSError as exc:
                rejected = self._fail_locked(exc)
            else:
                if idle or self._options.fsync is FsyncPolicy.ALWAYS or self._s.rotate_pending:
                    self._wake.notify_all()
                return seq
        _reject(rejected, self._unavailable())
        raise self._unavailable()

    def durable(self, ticket: int) -> Future[None]:
        """Completes when record `ticket` is durable as the policy promises (see above)."""
        future: Future[None] = Future()
        with self._lock:
            if ticket <= self._s.durable_seq or (
                self._s.healthy and self._options.fsync is not FsyncPolicy.ALWAYS
            ):
                future.set_result(None)
            elif not self._s.healthy:
                future.set_exception(self._unavailable())
            else:
                heapq.heappush(self._waiters, (ticket, next(self._order), future))
                self._wake.notify_all()
        return future

    def wait_durable(self, ticket: int, timeout: float | None = None) -> None:
        self.durable(ticket).result(timeout)

    def record(self, event: AuditEvent) -> int:
        """Append and wait until durable (for threads that may block: lifecycle events)."""
        ticket = self.append(event)
        self.wait_durable(ticket)
        return ticket

    def flush(self) -> None:
        """Rotate if the file is full, fsync what is written, write the head now (blocks)."""
        with self._io:
            if self._s.rotate_pending:
                self._rotate()
            self._checkpoint_locked(force_head=True)
        if not self._s.healthy:
            raise self._unavailable()

    def kick(self) -> None:
        """Wake the background thread to look at its clocks (tests advance a fake clock)."""
        with self._lock:
            self._wake.notify_all()

    def try_recover(self) -> bool:
        """Resume after a failure (see the module docstring); True if the log is healthy."""
        with self._io:
            with self._lock:
                if self._s.healthy or self._s.closed:
                    return self._s.healthy
                reason = f"resumed after a write error: {self._s.error}"
                self._s.open(reason=reason)
            self._checkpoint_locked(force_head=True)
        return self._s.healthy

    def close(self) -> None:
        """Write `audit.closed`, fsync, anchor the head, stop the thread. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._wake.notify_all()
        self._background.join()
        with self._io:
            failed: list[Future[None]] = []
            with self._lock:
                if self._s.healthy:
                    try:
                        self._s.emit("audit.closed", "")
                    except OSError as exc:
                        failed = self._fail_locked(exc)
            _reject(failed, self._unavailable())
            self._checkpoint_locked(force_head=True)
            with self._lock:
                self._s.close_file()
                rejected = [future for _, _, future in self._waiters]
                self._waiters = []
        _reject(rejected, AuditUnavailable("the audit log is closed"))

    # -- the background thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._closing and (action := self._due_locked()) is None:
                    self._wake.wait(self._timeout_locked())
                if self._closing:
                    return
            if action == "retry":
                self.try_recover()
            elif action == "rotate":
                with self._io:
                    self._rotate()
            else:
                self._checkpoint(force_head=action == "head")

    def _due_locked(self) -> str | None:
        s, options, now = self._s, self._options, self._clock.monotonic()
        if not s.healthy:
            due = options.retry_interval > 0 and now - s.failed_at >= options.retry_interval
            return "retry" if due else None
        if s.rotate_pending:
            return "rotate"
        behind = s.seq > s.durable_seq
        if behind and (options.fsync is FsyncPolicy.ALWAYS or self._waiters):
            return "sync"
        interval_due = now - s.last_sync >= options.fsync_interval
        if behind and options.fsync is FsyncPolicy.INTERVAL and interval_due:
            return "sync"
        if s.seq > s.head_seq and now - s.last_head >= options.head_interval:
            return "head"
        return None

    def _timeout_locked(self) -> float:
        """Until the next thing due. Deadlines of work there is none of are left out: the thread
        would otherwise wake every millisecond to find nothing to do (and take the GIL from the
        relay); an append that gives it work again wakes it (see `append_many`)."""
        s, options, now = self._s, self._options, self._clock.monotonic()
        waits = [_MAX_WAIT]
        if s.seq > s.head_seq:
            waits.append(s.last_head + options.head_interval - now)
        if options.fsync is FsyncPolicy.INTERVAL and s.seq > s.durable_seq:
            waits.append(s.last_sync + options.fsync_interval - now)
        if not s.healthy and options.retry_interval > 0:
            waits.append(s.failed_at + options.retry_interval - now)
        return max(0.001, min(waits))

    def _rotate(self) -> None:
        with self._lock:
            if not (self._s.healthy and self._s.rotate_pending):
                return  # decided before a failure, a recovery or another rotation
            try:
                old_fd = self._s.rotate()
            except OSError as exc:
                rejected = self._fail_locked(exc)
                old_fd = None
            else:
                rejected = []
        _reject(rejected, self._unavailable())
        if old_fd is not None:
            try:
                self._s.fs.fsync(old_fd)
            except OSError as exc:
                with self._lock:
                    rejected = self._fail_locked(exc)
                _reject(rejected, self._unavailable())
            finally:
                self._s.fs.close(old_fd)
            self._checkpoint_locked(force_head=True)

    def _checkpoint(self, *, force_head: bool) -> None:
        with self._io:
            self._checkpoint_locked(force_head=force_head)

    def _checkpoint_locked(self, *, force_head: bool) -> None:
        """fsync what is written (and the directory after a new file), complete the waiters it
        covers, then write the head if it is due (or forced)."""
        with self._lock:
            if not self._s.healthy or self._s.fd is None:
                return
            target, mac, sync_dir = self._s.seq, self._s.prev, self._s.dir_dirty
        s, fs = self._s, self._s.fs
        try:
            with self._lock:
                fd = fs.dup(self._s.fd)
            try:
                fs.fsync(fd)
            finally:
                fs.close(fd)
            if sync_dir:
                fs.fsync_dir(self.path.parent)
            self._synced(target, clear_dir=sync_dir)
            head_due = self._clock.monotonic() - s.last_head >= self._options.head_interval
            if force_head or (head_due and target > s.head_seq):
                data = s.signer.head(target, mac, self.path.name, format_ts(self._clock.now()))
                fs.replace_atomically(head_path(self.path), data)
                s.head_written(target)
        except OSError as exc:
            with self._lock:
                rejected = self._fail_locked(exc)
            _reject(rejected, self._unavailable())

    def _synced(self, target: int, *, clear_dir: bool) -> None:
        with self._lock:
            self._s.synced(target, clear_dir=clear_dir)
            done = []
            while self._waiters and self._waiters[0][0] <= target:
                done.append(heapq.heappop(self._waiters)[2])
        for future in done:
            if not future.done():
                future.set_result(None)

    # -- failure -------------------------------------------------------------------------------

    def _fail_locked(self, exc: OSError) -> list[Future[None]]:
        self._s.fail(exc)
        rejected, self._waiters = self._waiters, []
        return [future for _, _, future in rejected]

    def _unavailable(self) -> AuditUnavailable:
        if self._s.closed:
            return AuditUnavailable("the audit log is closed")
        return AuditUnavailable(self._s.error or "write error", disk_full=self._s.disk_full)


def _reject(futures: list[Future[None]], error: AuditUnavailable) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)
