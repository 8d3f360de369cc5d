"""`archive_chain`: move a chain's oldest rotated files to another directory, leaving a signed
anchor (`archive.py`) so that what remains still verifies on its own.

The order of operations; a kill at any point loses nothing, and running the command again
finishes or repeats the work:

1. lock the log directory (one archiver at a time) and verify the chain as it is: a chain that
   does not verify is never signed for;
2. finish a run cut short after step 6: the files the live anchor archived that are still here
   are delivered (steps 4-5, with the live anchor's own bytes) and removed (step 7);
3. choose the oldest rotated files (`--keep`, `--before`); the file being written never is;
4. copy each into the destination: a temporary file, written from the original while hashing
   it (the bytes must be those verified), fsynced, renamed; then fsync the destination and read
   every copy back against the verified SHA-256. A copy already there is reused if identical,
   and never overwritten if not;
5. write the anchor's copy into the destination (temporary file, fsync, rename, fsync);
6. write the anchor into the log directory the same way: from here on the remainder verifies
   from it (a kill before this leaves the log as it was, with spare copies in the destination);
7. remove the originals and fsync the log directory.

pgwarden may be running: it only appends to the active file and renames it at rotation, and
rotated files never change, so archiving needs no cooperation from it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from proxy.audit.archive import (
    Anchor,
    ArchivedFile,
    anchor_copy_name,
    anchor_path,
    choose,
    digest,
    parse,
    seal,
    segment,
)
from proxy.audit.fsio import FileSystem
from proxy.audit.records import Signer, format_ts
from proxy.audit.verify import VerifyReport, verify
from proxy.clock import Clock

_CHUNK = 1024 * 1024
DIRECTORY_MODE = 0o700  # archived records hold queries, like the log


class ArchiveRefused(Exception):
    """Archiving would lose or mislabel records; nothing was removed. The message says why."""


class ChainBroken(ArchiveRefused):
    """The chain does not verify: archiving it would sign records that cannot be trusted."""


@dataclass(frozen=True, slots=True)
class Archivist:
    """Who archives, and from where (recorded in the anchor)."""

    user: str
    host: str


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    anchor: Anchor | None  # the new anchor, if files were archived
    archived: tuple[ArchivedFile, ...]
    finished: tuple[ArchivedFile, ...]  # left by a run cut short, removed now
    kept: int  # rotated files left in the log directory


def archive_chain(
    active: Path,
    key: bytes,
    destination: Path,
    *,
    keep: int | None,
    before: datetime | None,
    clock: Clock,
    archivist: Archivist,
    fs: FileSystem | None = None,
) -> ArchiveResult:
    """Archive the chain whose active file is `active` (see the module docstring)."""
    fs, signer = fs or FileSystem(), Signer(key)
    destination = destination.absolute()
    if destination.exists() and destination.samefile(active.parent):
        raise ArchiveRefused(f"{destination} is the log's own directory: archive elsewhere")
    with _locked(active.parent):
        report = verify(active, key)  # step 1
        if not report.ok:
            raise ChainBroken(f"{active} does not verify, so it is not archived: {report.problem}")
        finished = _finish(fs, signer, active, destination, report)  # step 2
        rotated = [f for f in report.file_facts if f.name != active.name]
        chosen = choose(rotated, keep=keep, before=before)  # step 3
        if not chosen:
            return ArchiveResult(None, (), finished, len(rotated))
        if empty := [f.name for f in chosen if not f.records]:
            raise ArchiveRefused(f"{empty[0]} holds no record, so pgwarden did not rotate it: "
                                 "move it out of the log directory and run again")  # fmt: skip
        anchor = segment(
            active.name, chosen, report.anchor,
            workers_started=tuple(sorted(report.workers_started)),
            archived_at=format_ts(clock.now()), archived_by=archivist.user,
            host=archivist.host, destination=str(destination),
        )  # fmt: skip
        data = seal(signer, anchor)
        _deliver(fs, active, destination, anchor, data, files=anchor.files)  # steps 4-5
        fs.replace_atomically(anchor_path(active), data)  # step 6
        _remove(fs, active, anchor.files)  # step 7
        return ArchiveResult(anchor, anchor.files, finished, len(rotated) - len(chosen))


def _finish(
    fs: FileSystem, signer: Signer, active: Path, destination: Path, report: VerifyReport
) -> tuple[ArchivedFile, ...]:
    """Step 2: deliver and remove what the live anchor archived but a run cut short left here.
    `verify` checked that each is the very file the anchor names."""
    if report.anchor is None or not report.leftovers:
        return ()
    data = anchor_path(active).read_bytes()
    if parse(signer, data) != report.anchor:
        raise ArchiveRefused(f"{anchor_path(active)} changed while it was verified")
    _deliver(fs, active, destination, report.anchor, data, files=report.leftovers)
    _remove(fs, active, report.leftovers)
    return report.leftovers


def _deliver(
    fs: FileSystem,
    active: Path,
    destination: Path,
    anchor: Anchor,
    data: bytes,
    *,
    files: Sequence[ArchivedFile],
) -> None:
    """Steps 4 and 5: every file copied and checked, then the anchor's copy."""
    if not destination.is_dir():
        destination.mkdir(mode=DIRECTORY_MODE, parents=True)
        fs.fsync_dir(destination.parent)
    for entry in files:
        _copy(fs, active.parent / entry.name, destination / entry.name, entry)
    fs.fsync_dir(destination)
    for entry in files:
        if digest(destination / entry.name) != entry:
            raise ArchiveRefused(
                f"the copy {destination / entry.name} does not read back as it was written "
                "(a failing disk?); nothing was removed"
            )
    fs.replace_atomically(destination / anchor_copy_name(active.name, anchor.seq), data)


def _copy(fs: FileSystem, source: Path, target: Path, expected: ArchivedFile) -> None:
    if target.exists():
        if target.samefile(source):
            raise ArchiveRefused(f"{target} is the original itself: archive elsewhere")
        if digest(target) != expected:
            raise ArchiveRefused(
                f"{target} exists and is not {source.name} as verified: not overwriting it "
                "(another log's archive? choose another destination)"
            )
        return  # an earlier run's copy
    temporary = target.with_name(target.name + ".tmp")
    content, size = hashlib.sha256(), 0
    fd = fs.open_truncate(temporary)
    try:
        with source.open("rb") as original:
            while chunk := original.read(_CHUNK):
                content.update(chunk)
                size += len(chunk)
                fs.write_all(fd, chunk)
        fs.fsync(fd)
    finally:
        fs.close(fd)
    if (size, content.hexdigest()) != (expected.size, expected.sha256):
        fs.remove(temporary)
        raise ArchiveRefused(f"{source} changed after it was verified; nothing was removed")
    fs.rename(temporary, target)


def _remove(fs: FileSystem, active: Path, files: Sequence[ArchivedFile]) -> None:
    for entry in files:
        with contextlib.suppress(FileNotFoundError):  # removed by the run that was cut short
            fs.remove(active.parent / entry.name)
    fs.fsync_dir(active.parent)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One archiver per log directory (an advisory lock on the directory itself)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            message = f"another `pgwarden audit archive` is running on {directory}"
            raise ArchiveRefused(message) from None
        yield
    finally:
        os.close(fd)
