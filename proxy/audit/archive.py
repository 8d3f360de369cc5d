"""The archive anchor: what lets a chain whose oldest files were moved away verify on its own.

Archiving (`archiving.py`, `pgwarden audit archive`) moves a chain's oldest rotated files to
another directory. What stays must still prove that nothing before it was cut off, so the
archiver writes an *anchor* beside the log, `<log>.anchor` (a copy, `<log>.anchor.<seq>`, goes
with the files). It names the segment it archived and the link the remaining records continue
from, and carries a MAC under the audit key (`ANCHOR_DOMAIN`, so that no record or head passes
for an anchor)::

    {"anchor":1,"chain":"audit.jsonl","start_seq":1,"start_prev":"000…","seq":57,"mac":"…",
     "files":[{"name":"audit.jsonl.000000000001","size":4100,"sha256":"…"}, …],
     "workers_started":[1],"archived_at":"…Z","archived_by":"alice","host":"db1",
     "destination":"/srv/audit-archive","anchor_mac":"…"}

`seq`/`mac` are the last archived record's: the first remaining record must have seq `seq + 1`
and prev `mac`. `start_seq`/`start_prev` are where the segment itself begins (seq 1 and the
genesis prev, or the previous anchor's `seq + 1` and `mac`), so successive anchors chain.
`workers_started` keeps the workers the archived records said were started (`verify.py` still
requires their chains). The MAC covers the other members serialised canonically (sorted keys,
no spaces, ASCII), so the file may be re-read and checked without trusting its layout.

This module is the format, the names and the choice of files; its only I/O reads an anchor or
hashes a file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy.audit.records import ANCHOR_SUFFIX, ARCHIVE_DIGITS, GENESIS, Signer, archive_seq

ANCHOR_DOMAIN = b"pgwarden-audit-anchor-v1\n"
ANCHOR_VERSION = 1
MAX_ANCHOR_BYTES = 16 * 1024 * 1024  # ~100,000 files listed: far above any real segment
_HEX64 = frozenset("0123456789abcdef")
_CHUNK = 1024 * 1024


class BadAnchor(ValueError):
    """An anchor that is malformed or not authentic; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ArchivedFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class FileFacts:
    """One file as a verified walk saw it (`verify.py`): what an anchor needs to name it."""

    name: str
    size: int
    sha256: str
    records: int
    first_seq: int = 0
    first_prev: str = ""
    last_seq: int = 0
    last_mac: str = ""
    last_ts: str = ""

    def archived(self) -> ArchivedFile:
        return ArchivedFile(self.name, self.size, self.sha256)


@dataclass(frozen=True, slots=True)
class Anchor:
    chain: str  # the active file's name: the chain this anchor belongs to
    start_seq: int
    start_prev: str
    seq: int
    mac: str
    files: tuple[ArchivedFile, ...]
    workers_started: tuple[int, ...]
    archived_at: str
    archived_by: str
    host: str
    destination: str

    def covers(self, name: str) -> ArchivedFile | None:
        return next((f for f in self.files if f.name == name), None)


def anchor_path(active: Path) -> Path:
    return active.with_name(active.name + ANCHOR_SUFFIX)


def anchor_copy_name(chain: str, seq: int) -> str:
    return f"{chain}{ANCHOR_SUFFIX}.{seq:0{ARCHIVE_DIGITS}d}"


def archived_in(directory: Path, active: Path) -> tuple[list[Path], list[Path]]:
    """(the chain's files in `directory`, in chain order; its anchor copies, oldest first)."""
    files, anchors = [], []
    copy_prefix = active.name + ANCHOR_SUFFIX + "."
    for candidate in directory.iterdir():
        if (seq := archive_seq(active, candidate)) is not None:
            files.append((seq, candidate))
        digits = candidate.name[len(copy_prefix) :]
        if candidate.name.startswith(copy_prefix) and digits.isdigit() and digits.isascii():
            anchors.append((int(digits), candidate))
    return [p for _, p in sorted(files)], [p for _, p in sorted(anchors)]


# -- the file format ---------------------------------------------------------------------------


def seal(signer: Signer, anchor: Anchor) -> bytes:
    """The anchor's file: one line of JSON ending with its MAC."""
    unsigned = _canonical({"anchor": ANCHOR_VERSION, **asdict(anchor)})
    tag = signer.tag(ANCHOR_DOMAIN, unsigned)
    return unsigned[:-1] + b',"anchor_mac":"' + tag.encode("ascii") + b'"}\n'


def parse(signer: Signer, data: bytes) -> Anchor:
    """Check an anchor's MAC and shape; raises BadAnchor."""
    try:
        body = json.loads(data)
        tag = body.pop("anchor_mac")
        unsigned = _canonical(body)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise BadAnchor("the anchor is not valid (not one JSON object with a mac)") from exc
    if not isinstance(tag, str) or signer.tag(ANCHOR_DOMAIN, unsigned) != tag:
        raise BadAnchor("the anchor's mac does not match: it was altered, or another key wrote it")
    if body.pop("anchor", None) != ANCHOR_VERSION:  # authentic: so a newer pgwarden wrote it
        raise BadAnchor("the anchor has a format this pgwarden does not know: upgrade it")
    try:
        files = tuple(ArchivedFile(**entry) for entry in body.pop("files"))
        anchor = Anchor(files=files, workers_started=tuple(body.pop("workers_started")), **body)
    except TypeError as exc:
        raise BadAnchor(f"the anchor is not valid ({exc})") from exc
    _check_types(anchor)
    return anchor


def read_anchor(active: Path, signer: Signer) -> Anchor | None:
    """The chain's live anchor, or None if it has none; raises BadAnchor (or OSError)."""
    try:
        return load_anchor(anchor_path(active), signer)
    except FileNotFoundError:
        return None


def load_anchor(path: Path, signer: Signer) -> Anchor:
    """The anchor in `path`; raises BadAnchor (or OSError)."""
    with path.open("rb") as file:
        data = file.read(MAX_ANCHOR_BYTES + 1)
    if len(data) > MAX_ANCHOR_BYTES:
        raise BadAnchor(f"the anchor is larger than {MAX_ANCHOR_BYTES} bytes")
    return parse(signer, data)


def digest(path: Path) -> ArchivedFile:
    """A file's name, size and SHA-256, as an anchor names it."""
    content, size = hashlib.sha256(), 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            content.update(chunk)
            size += len(chunk)
    return ArchivedFile(path.name, size, content.hexdigest())


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _check_types(a: Anchor) -> None:
    ints = [a.start_seq, a.seq, *a.workers_started, *(f.size for f in a.files)]
    macs = [a.start_prev, a.mac, *(f.sha256 for f in a.files)]
    texts = [a.chain, a.archived_at, a.archived_by, a.host, a.destination]
    texts += [f.name for f in a.files]
    if not (all(type(n) is int and n >= 0 for n in ints)
            and all(isinstance(m, str) and len(m) == 64 and set(m) <= _HEX64 for m in macs)
            and all(isinstance(t, str) for t in texts)
            and a.files and 1 <= a.start_seq <= a.seq):  # fmt: skip
        raise BadAnchor("the anchor is not valid (a member has the wrong type or value)")


# -- choosing and describing a segment ---------------------------------------------------------


def choose(
    rotated: Sequence[FileFacts], *, keep: int | None, before: datetime | None
) -> list[FileFacts]:
    """The files to archive: the oldest rotated files, a contiguous run from the start of what is
    left, that leaves `keep` rotated files and holds only records written before `before`."""
    chosen = list(rotated[: max(0, len(rotated) - keep)] if keep is not None else rotated)
    if before is not None:
        late = (i for i, f in enumerate(chosen) if datetime.fromisoformat(f.last_ts) >= before)
        chosen = chosen[: next(late, len(chosen))]
    return chosen


def segment(
    chain: str, chosen: Sequence[FileFacts], previous: Anchor | None, **facts: Any
) -> Anchor:
    """The anchor for archiving `chosen` after `previous`; `facts` are workers_started,
    archived_at, archived_by, host and destination."""
    first, last = chosen[0], chosen[-1]
    start = (previous.seq + 1, previous.mac) if previous else (1, GENESIS)
    if (first.first_seq, first.first_prev) != start:  # the caller verified the chain: a bug
        raise ValueError(f"{first.name} does not continue from {start[0] - 1}")
    files = tuple(f.archived() for f in chosen)
    return Anchor(chain, first.first_seq, first.first_prev, last.last_seq, last.last_mac, files,
                  **facts)  # fmt: skip
