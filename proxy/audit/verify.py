"""`verify(path, key)`: does the audit log hold an unbroken, authentic chain up to its head?

The files are walked in chain order (archives by the first seq in their name, then the active
file). Every line must end with a newline, carry a valid MAC, have `seq` one more than the line
before (from 1) and `prev` equal to that line's `mac`; each archive must start at the seq its
name promises; the head file must be authentic and the chain must reach the record it anchors,
with the same mac. The first record that breaks a rule is named — file, line, seq, and what is
wrong — and nothing after it is trusted:

- a flipped byte or a forged/inserted line: its MAC does not match;
- a deleted line, or a deleted rotated file: `seq` jumps;
- reordered or duplicated lines: `seq` goes back (or `prev` does not chain);
- a truncated tail: the log ends before the head's seq (or mid-line: a torn write that the server
  seals when it next opens the log);
- a worker's chain put in another worker's place (`proxy.workers`): its `audit.opened` records
  name the file it was opened as, and that file's worker must be this one's.

The report lists the workers the log says were started (`worker.started`, in the primary's log),
so that a deleted worker chain is noticed too (`proxy/commands/audit_verify.py`).

Verifying a log that is being written is fine, except while a rotation renames files.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from proxy.audit.records import (
    GENESIS,
    BadRecord,
    Head,
    Record,
    Signer,
    archive_seq,
    head_path,
    log_files,
)

_SEQ = re.compile(rb'^\{"seq":(\d{1,20}),')
_WORKER = re.compile(r"\.worker([1-9][0-9]*)(?:\.|$)")


def worker_of(file_name: str) -> int:
    """The worker an audit file belongs to: k for `audit.worker<k>.jsonl`, else 0 (the primary)."""
    match = _WORKER.search(file_name)
    return int(match.group(1)) if match else 0


class VerifyUnreadable(Exception):
    """There is no log to verify at that path, or it cannot be read."""


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" + (f": seq {self.seq}" if self.seq is not None else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    records: int  # records verified (before the problem, if any)
    files: tuple[str, ...]
    last_seq: int
    head_seq: int | None
    recoveries: int
    problem: Problem | None
    workers_started: frozenset[int] = frozenset()  # `worker.started` records seen

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return f"FAILED: {self.problem} ({self.records} records verified before it)"
        recovered = f", {self.recoveries} recoveries" if self.recoveries else ""
        files = len(self.files)
        return (
            f"ok: {self.records} records in {files} file{'s' if files != 1 else ''}, "
            f"head seq {self.head_seq}{recovered}"
        )


def verify(path: Path, key: bytes) -> VerifyReport:
    files = log_files(path)
    if not files:
        raise VerifyUnreadable(f"no audit log at {path}")
    walk = _Walk(Signer(key), worker_of(path.name))
    head, head_problem = None, None
    try:
        head = walk.signer.parse_head(head_path(path).read_bytes())
    except FileNotFoundError:
        head_problem = "the head file is missing, so a truncated tail cannot be ruled out"
    except OSError as exc:
        raise VerifyUnreadable(f"cannot read the head file: {exc}") from exc
    except BadRecord as exc:
        head_problem = str(exc)
    walk.anchor = head
    try:
        for file in files:
            walk.file(file, archive_seq(path, file))
        walk.check_head(head, head_problem, head_path(path).name)
    except _Found as found:
        walk.problem = found.problem
    except OSError as exc:
        raise VerifyUnreadable(f"cannot read the audit log: {exc}") from exc
    return VerifyReport(
        walk.count,
        tuple(f.name for f in files),
        walk.expected - 1,
        head.seq if head else None,
        walk.recoveries,
        walk.problem,
        frozenset(walk.workers_started),
    )


class _Found(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


class _Walk:
    def __init__(self, signer: Signer, worker: int) -> None:
        self.signer = signer
        self.worker = worker
        self.workers_started: set[int] = set()
        self.expected = 1
        self.prev = GENESIS
        self.count = 0
        self.recoveries = 0
        self.anchor: Head | None = None
        self.anchor_seen = False
        self.problem: Problem | None = None
        self.last_file, self.last_line = "", 0

    def file(self, path: Path, named_seq: int | None) -> None:
        self.last_file, self.last_line = path.name, 0
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                self.last_line = number
                self.line(path.name, number, line, named_seq if number == 1 else None)

    def line(self, file: str, number: int, line: bytes, named_seq: int | None) -> None:
        def fail(message: str, seq: int | None = None) -> _Found:
            if seq is None and (match := _SEQ.match(line)) is not None:
                seq = int(match.group(1))
            return _Found(Problem(file, number, seq, message))

        if not line.endswith(b"\n"):
            raise fail("the line has no end: cut short (a torn write, which pgwarden seals when it "
                       "next opens the log, or a truncated file)")  # fmt: skip
        try:
            record = self.signer.parse(line)
        except BadRecord as exc:
            hint = " (is this the right key?)" if self.count == 0 else ""
            raise fail(f"{exc}{hint}") from None
        if named_seq is not None and record.seq != named_seq:
            raise fail(f"the file's name says it starts at seq {named_seq}", record.seq)
        if record.seq != self.expected:
            raise fail(self._gap(record, number), record.seq)
        if record.prev != self.prev:
            message = f"prev is not the mac of record {record.seq - 1}: the chain is broken"
            raise fail(message, record.seq)
        if self.anchor is not None and record.seq == self.anchor.seq:
            if record.mac != self.anchor.mac:
                raise fail("this is not the record the head anchored (replaced?)", record.seq)
            self.anchor_seen = True
        self.recoveries += record.kind == "audit.recovery"
        self._kind_checks(record, fail)
        self.expected, self.prev, self.count = record.seq + 1, record.mac, self.count + 1

    def _kind_checks(self, record: Record, fail: Callable[[str, int | None], _Found]) -> None:
        if record.kind == "audit.opened":
            opened_as = str(record.body.get("file", ""))
            if worker_of(opened_as) != self.worker:
                raise fail(f"this chain was opened as {opened_as}, a file of worker "
                           f"{worker_of(opened_as)}, not {self.worker}: a chain put in another's "
                           "place?", record.seq)  # fmt: skip
        elif record.kind == "worker.started" and isinstance(record.body.get("worker"), int):
            self.workers_started.add(record.body["worker"])

    def _gap(self, record: Record, number: int) -> str:
        seq, expected = record.seq, self.expected
        if seq < expected:
            return f"seq goes back (expected {expected}): a record was moved or repeated"
        missing = f"{expected}" if seq - 1 == expected else f"{expected}-{seq - 1}"
        if expected == 1:
            message = f"the log starts at seq {seq}: records {missing} are missing"
        else:
            message = f"seq jumps from {expected - 1} to {seq}: record(s) {missing} are missing"
        message += " (a deleted file?)" if number == 1 else " (deleted lines?)"
        notes = record.body.get("notes") if record.kind == "audit.recovery" else None
        if notes:
            message += f"; its recovery record says: {'; '.join(map(str, notes))}"
        return message

    def check_head(self, head: Head | None, problem: str | None, head_file: str) -> None:
        if head is None:
            raise _Found(Problem(head_file, 1, None, problem or "no head"))
        after = (self.last_file, self.last_line + 1)
        if head.seq >= self.expected:
            message = (
                f"the log ends at seq {self.expected - 1} but the head anchors seq {head.seq}: "
                "the tail was truncated"
            )
            raise _Found(Problem(*after, self.expected, message))
        if not self.anchor_seen:  # cannot happen for a log that starts at seq 1
            raise _Found(Problem(*after, head.seq, "the record the head anchors was not seen"))
