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
  name the file it was opened as, and that file's worker must be this one's; for a replica's
  chain (`records.chain_path`), whose name was never anything else, the file must be this one
  (`opened_as`), so that one replica's chain cannot stand in for another's.

The report lists the workers the log says were started (`worker.started`, in the primary's log),
so that a deleted worker chain is noticed too (`proxy/commands/audit_verify.py`), and the records
that are not tampered with but have no outcome: lifecycle records (`lifecycle_trail.py`) and
query records (`query_trail.py`) written just before pgwarden stopped. Logs of every format
verify alike (the chain does not depend on what the records hold).

Archived logs (`archive.py`, `verify_plan.py`): a log whose oldest files were archived starts
after its anchor, which must be authentic and this chain's, and its first record must continue
from it (deleting files without archiving them still shows as missing records; so does a file
deleted after the anchor). With `archives`, the archived files and the log are one chain from
seq 1 again, and every anchor must match the files it names.

Verifying a log that is being written is fine, except while a rotation renames files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from proxy.audit.archive import Anchor, ArchivedFile, FileFacts
from proxy.audit.lifecycle_trail import LifecycleTrail
from proxy.audit.query_trail import QueryTrail
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
from proxy.audit.verify_plan import AnchorProblem, WalkPlan, check_anchors, plan_walk

_SEQ = re.compile(rb'^\{"seq":(\d{1,20}),')
_WORKER = re.compile(r"\.worker([1-9][0-9]*)(?:\.|$)")


def worker_of(file_name: str) -> int:
    """The worker an audit file belongs to: k for `audit.worker<k>.jsonl`, else 0 (the primary)."""
    match = _WORKER.search(file_name)
    return int(match.group(1)) if match else 0


MAX_SEQS_SHOWN = 10  # seqs named in a summary line; the count says how many there are


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
    workers_started: frozenset[int] = frozenset()  # `worker.started` records seen (or anchored)
    anchor: Anchor | None = None  # the live anchor: the log continues after the records it archived
    file_facts: tuple[FileFacts, ...] = ()  # the files walked, as `archiving.py` needs them
    leftovers: tuple[ArchivedFile, ...] = ()  # archived by the anchor, not yet removed
    from_archive: int | None = None  # files walked from the archive (None: not asked to)
    unsettled: tuple[int, ...] = ()  # lifecycle records with no outcome (pgwarden stopped)
    rolled_back: tuple[int, ...] = ()  # lifecycle records whose commit failed
    queries_unsettled: int = 0  # query records with no outcome (running, or pgwarden stopped)
    queries_unsettled_seqs: tuple[int, ...] = ()  # the first of them

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return f"FAILED: {self.problem} ({self.records} records verified before it)"
        recovered = f", {self.recoveries} recoveries" if self.recoveries else ""
        files = len(self.files)
        archived = f" ({self.from_archive} archived)" if self.from_archive is not None else ""
        after = ""
        if self.anchor is not None and self.from_archive is None:
            after = f", after the records archived up to seq {self.anchor.seq}"
        left = ""
        if self.leftovers:
            left = (f"; {len(self.leftovers)} archived file(s) not yet removed: run "
                    "`pgwarden audit archive` again")  # fmt: skip
        return (
            f"ok: {self.records} records in {files} file{'s' if files != 1 else ''}{archived}, "
            f"head seq {self.head_seq}{recovered}{after}{left}{self._lifecycle_note()}"
            f"{self._query_note()}"
        )

    def _lifecycle_note(self) -> str:
        note = ""
        if self.rolled_back:
            rolled = _seqs(self.rolled_back)
            note += f"; {len(self.rolled_back)} lifecycle record(s) rolled back (seq {rolled})"
        if self.unsettled:
            note += (
                f"; {len(self.unsettled)} lifecycle record(s) written just before pgwarden "
                f"stopped, not known to have taken effect (seq {_seqs(self.unsettled)})"
            )
        return note

    def _query_note(self) -> str:
        if not self.queries_unsettled:
            return ""
        return (
            f"; {self.queries_unsettled} query record(s) with no outcome: still running, or "
            f"written just before pgwarden stopped (seq {_seqs(self.queries_unsettled_seqs)})"
        )


def _seqs(seqs: tuple[int, ...]) -> str:
    shown = ", ".join(str(seq) for seq in seqs[:MAX_SEQS_SHOWN])
    return shown + (", ..." if len(seqs) > MAX_SEQS_SHOWN else "")


def verify(
    path: Path, key: bytes, *, archives: Sequence[Path] = (), opened_as: str | None = None
) -> VerifyReport:
    """Verify the log at `path` (its active file); with `archives`, the directories its archived
    files were moved to (`pgwarden audit archive`), verify them and the log as one chain. With
    `opened_as`, every `audit.opened` record must name that file (a replica's chain)."""
    files = log_files(path)
    if not files:
        raise VerifyUnreadable(f"no audit log at {path}")
    if missing := [str(d) for d in archives if not d.is_dir()]:
        raise VerifyUnreadable(f"no archive directory at {', '.join(missing)}")
    walk = _Walk(Signer(key), worker_of(path.name), opened_as)
    head, head_problem = None, None
    try:
        head = walk.signer.parse_head(head_path(path).read_bytes())
    except FileNotFoundError:
        head_problem = "the head file is missing, so a truncated tail cannot be ruled out"
    except OSError as exc:
        raise VerifyUnreadable(f"cannot read the head file: {exc}") from exc
    except BadRecord as exc:
        head_problem = str(exc)
    walk.head = head
    plan = WalkPlan([])
    try:
        plan = plan_walk(path, files, archives, walk.signer)
        walk.begin(plan)
        for file in plan.files:
            walk.file(file, archive_seq(path, file))
        walk.check_head(head, head_problem, head_path(path).name)
        check_anchors(plan, walk.facts)
    except AnchorProblem as exc:
        walk.problem = Problem(exc.file, 1, None, exc.message)
    except _Found as found:
        walk.problem = found.problem
    except OSError as exc:
        raise VerifyUnreadable(f"cannot read the audit log: {exc}") from exc
    return VerifyReport(
        walk.count,
        tuple(f.name for f in plan.files),
        walk.expected - 1,
        head.seq if head else None,
        walk.recoveries,
        walk.problem,
        frozenset(walk.workers_started),
        plan.anchor,
        tuple(walk.facts),
        tuple(plan.leftovers),
        plan.archived,
        walk.lifecycle.unsettled(),
        tuple(walk.lifecycle.rolled_back),
        *walk.queries.unsettled(),
    )


class _Found(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


class _Walk:
    def __init__(self, signer: Signer, worker: int, opened_as: str | None = None) -> None:
        self.signer = signer
        self.worker = worker
        self.opened_as = opened_as
        self.workers_started: set[int] = set()
        self.expected = 1
        self.prev = GENESIS
        self.origin = ""  # where the walk starts, if not at seq 1: "the anchor audit.jsonl.anchor"
        self.archive_mode = False  # archived files are walked too, from seq 1
        self.count = 0
        self.recoveries = 0
        self.head: Head | None = None
        self.head_seen = False
        self.problem: Problem | None = None
        self.last_file, self.last_line = "", 0
        self.facts: list[FileFacts] = []
        self.lifecycle = LifecycleTrail()
        self.queries = QueryTrail()

    def begin(self, plan: WalkPlan) -> None:
        self.archive_mode = plan.archived is not None
        if (anchor := plan.anchor) is not None and not self.archive_mode:  # the remainder alone
            self.expected, self.prev, self.origin = anchor.seq + 1, anchor.mac, plan.origin
            self.workers_started.update(anchor.workers_started)

    def file(self, path: Path, named_seq: int | None) -> None:
        self.last_file, self.last_line = path.name, 0
        content, size, first, last = hashlib.sha256(), 0, None, None
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                self.last_line = number
                content.update(line)
                size += len(line)
                last = self.line(path.name, number, line, named_seq if number == 1 else None)
                first = first or last
        facts = FileFacts(path.name, size, content.hexdigest(), self.last_line)
        if first is not None and last is not None:
            facts = replace(facts, first_seq=first.seq, first_prev=first.prev, last_seq=last.seq,
                            last_mac=last.mac, last_ts=str(last.body.get("ts")))  # fmt: skip
        self.facts.append(facts)

    def line(self, file: str, number: int, line: bytes, named_seq: int | None) -> Record:
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
            link = f"the mac {self.origin} ends with" if self.count == 0 and self.origin else (
                f"the mac of record {record.seq - 1}")  # fmt: skip
            raise fail(f"prev is not {link}: the chain is broken", record.seq)
        if self.head is not None and record.seq == self.head.seq:
            if record.mac != self.head.mac:
                raise fail("this is not the record the head anchored (replaced?)", record.seq)
            self.head_seen = True
        self.recoveries += record.kind == "audit.recovery"
        self._kind_checks(record, fail)
        self.expected, self.prev, self.count = record.seq + 1, record.mac, self.count + 1
        return record

    def _kind_checks(self, record: Record, fail: Callable[[str, int | None], _Found]) -> None:
        if record.kind == "audit.opened":
            opened_as = str(record.body.get("file", ""))
            if self.opened_as is not None and opened_as != self.opened_as:
                raise fail(f"this chain was opened as {opened_as}, not {self.opened_as}: "
                           "another replica's or process's chain put in its place?",
                           record.seq)  # fmt: skip
            if worker_of(opened_as) != self.worker:
                raise fail(f"this chain was opened as {opened_as}, a file of worker "
                           f"{worker_of(opened_as)}, not {self.worker}: a chain put in another's "
                           "place?", record.seq)  # fmt: skip
        elif record.kind == "worker.started" and isinstance(record.body.get("worker"), int):
            self.workers_started.add(record.body["worker"])
        self.lifecycle.see(record)
        self.queries.see(record)

    def _gap(self, record: Record, number: int) -> str:
        seq, expected = record.seq, self.expected
        if seq < expected:
            return f"seq goes back (expected {expected}): a record was moved or repeated"
        missing = f"{expected}" if seq - 1 == expected else f"{expected}-{seq - 1}"
        if self.count == 0 and self.origin:
            message = (f"the log starts at seq {seq} but {self.origin} ends at seq "
                       f"{expected - 1}: records {missing} are missing")  # fmt: skip
        elif self.count == 0:
            message = f"the log starts at seq {seq}: records {missing} are missing"
        else:
            message = f"seq jumps from {expected - 1} to {seq}: record(s) {missing} are missing"
        if number != 1:
            message += " (deleted lines?)"
        elif self.archive_mode:
            message += " (in neither the log nor the archive: a lost archived file?)"
        elif self.count == 0 and not self.origin:
            message += " (deleted files? to prune, `pgwarden audit archive` leaves a signed anchor)"
        else:
            message += " (a deleted file?)"
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
        if not self.head_seen and self.origin:  # an old head's record was archived since
            message = f"the head anchors seq {head.seq}, before {self.origin}: an old head file?"
            raise _Found(Problem(head_file, 1, None, message))
        if not self.head_seen:  # cannot happen for a log that starts at seq 1
            raise _Found(Problem(*after, head.seq, "the record the head anchors was not seen"))
