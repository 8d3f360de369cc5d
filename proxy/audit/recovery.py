"""Finding the end of the chain on disk when the log opens (after a crash or a write error).

A crash can leave the last record cut short (a torn line: bytes with no newline, or — after a
power loss — a line of zeros). `find_chain_end` walks back from the end of the newest file to the
last line that is an authentic record (its MAC checks); everything after it is the torn tail.
It never decides that a valid record is garbage, and it never looks further back than
`scan_limit` bytes: a torn write is at most one record, so finding no valid record there means
something else is wrong (the wrong key, another file) and the log refuses to open rather than cut
it. `describe_torn` keeps evidence of what is cut (length, SHA-256, the first bytes) for the
`audit.recovery` record. When no file holds a record any more because every rotated file was
archived (`archive.py`), the chain continues from the anchor the archiver left.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from proxy.audit.archive import BadAnchor, anchor_path, read_anchor
from proxy.audit.records import GENESIS, BadRecord, Head, Record, Signer, head_path, log_files

INITIAL_WINDOW = 1024 * 1024
TORN_EVIDENCE_BYTES = 4096  # this much of a torn tail is kept, base64, in the recovery record


class ChainUnreadable(Exception):
    """The end of the chain cannot be found safely; the message says what was found."""


@dataclass(frozen=True, slots=True)
class TornPart:
    path: Path
    offset: int  # the file is cut to this size
    data: bytes


@dataclass(slots=True)
class ChainEnd:
    """The last authentic record on disk and what lies after it."""

    seq: int = 0
    mac: str = GENESIS
    kind: str | None = None
    file: Path | None = None  # the file holding it (None: the log is empty)
    active_first_seq: int | None = None  # the active file's first seq, if it holds records
    torn: list[TornPart] = field(default_factory=list)


def find_chain_end(active: Path, signer: Signer, scan_limit: int) -> ChainEnd:
    end = ChainEnd()
    budget = scan_limit
    for path in reversed(log_files(active)):
        data, found, window = _last_record(path, signer, budget)
        if found is None:
            # Only the active file may hold no record at all (a crash while it was new); an
            # archive without one, or too much garbage, is not a torn write.
            budget -= len(data)
            if path != active or budget <= 0 or window:
                raise ChainUnreadable(
                    f"no valid record at the end of {path} (read {scan_limit - budget} bytes): "
                    "is this the right key? run `pgwarden audit verify`"
                )
            end.torn.append(TornPart(path, 0, data))
            continue
        record, offset = found
        end.seq, end.mac, end.kind, end.file = record.seq, record.mac, record.kind, path
        end.torn.append(TornPart(path, offset, data))
        if path == active:
            end.active_first_seq = _first_seq(path, signer, record.seq)
        break
    end.torn = [part for part in reversed(end.torn) if part.data]
    if end.file is None and any(b"\n" in part.data for part in end.torn):
        # Whole lines and not one of them authentic: not a torn write but the wrong key.
        raise ChainUnreadable(
            f"{active} holds no record this key authenticates: is this the right key?"
        )
    if end.file is None:
        _continue_after_anchor(end, active, signer)
    return end


def _continue_after_anchor(end: ChainEnd, active: Path, signer: Signer) -> None:
    """No record left here, but an archive anchor (every rotated file archived, the active one
    empty): the chain goes on from the last archived record, not from genesis. An anchor that
    does not verify refuses the log: going on from seq 1 would hide what happened to it."""
    try:
        anchor = read_anchor(active, signer)
    except BadAnchor as exc:
        raise ChainUnreadable(
            f"{anchor_path(active)} is not a valid archive anchor ({exc}); restore it from the "
            "copy in the archive (`pgwarden audit verify --archive DIR` checks it)"
        ) from None
    if anchor is not None:
        end.seq, end.mac = anchor.seq, anchor.mac


def _last_record(
    path: Path, signer: Signer, budget: int
) -> tuple[bytes, tuple[Record, int] | None, bool]:
    """(the bytes after the last valid record, (record, its end offset) or None, whether the
    file holds more than the budget let us read)."""
    size = path.stat().st_size
    window = min(size, INITIAL_WINDOW, budget)
    with path.open("rb") as file:
        while True:
            file.seek(size - window)
            chunk = file.read(window)
            found = _last_in(chunk, signer, partial_start=window < size)
            if found is not None:
                record, end = found
                return chunk[end:], (record, size - window + end), False
            if window >= size or window >= budget:
                return chunk, None, window < size
            window = min(size, window * 4, budget)


def _last_in(chunk: bytes, signer: Signer, partial_start: bool) -> tuple[Record, int] | None:
    end = chunk.rfind(b"\n") + 1  # the bytes after the last newline are torn in any case
    while end > 0:
        start = chunk.rfind(b"\n", 0, end - 1) + 1
        if start == 0 and partial_start:
            return None  # the line may begin before the window
        try:
            return signer.parse(chunk[start:end]), end
        except BadRecord:
            end = start
    return None


def _first_seq(path: Path, signer: Signer, fallback: int) -> int:
    with path.open("rb") as file:
        line = file.readline()
    try:
        return signer.parse(line).seq
    except BadRecord:
        return fallback  # verification will name the damage


def describe_torn(parts: list[TornPart]) -> tuple[int, str | None, str | None]:
    """(bytes, SHA-256, base64 of the first bytes) of the torn tail, for the recovery record."""
    data = b"".join(part.data for part in parts)
    if not data:
        return 0, None, None
    evidence = base64.b64encode(data[:TORN_EVIDENCE_BYTES]).decode("ascii")
    return len(data), hashlib.sha256(data).hexdigest(), evidence


def read_head(active: Path, signer: Signer) -> tuple[Head | None, str | None]:
    """The anchored head, or None and a note on why it is missing or not trusted."""
    path = head_path(active)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"the head file cannot be read: {exc}"
    try:
        return signer.parse_head(data), None
    except BadRecord as exc:
        return None, f"{exc}; it was ignored"
