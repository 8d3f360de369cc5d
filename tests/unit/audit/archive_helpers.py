"""Shared pieces of the archive tests: a rotated log, the archiver with a fake clock, a file
system that crashes at a chosen step, and the anchor's raw JSON."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy.audit.archive import Anchor, anchor_path, read_anchor, seal
from proxy.audit.archiving import ArchiveResult, Archivist, archive_chain
from proxy.audit.fsio import FileSystem
from proxy.audit.log import FsyncPolicy, SinkOptions
from proxy.audit.records import Signer
from tests.fixtures.clock import FakeClock
from tests.unit.audit.helpers import KEY, event, open_log

ARCHIVIST = Archivist("auditor", "host1")
ROTATING = SinkOptions(
    fsync=FsyncPolicy.NEVER, head_interval=3600, retry_interval=0, max_file_bytes=4096
)


def rotated_log(path: Path, count: int = 60, *, clock: FakeClock | None = None) -> Path:
    """A closed log of `count` events over several files; with `clock`, an hour passes between
    events, so that the files' last records have different times."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open_log(path, options=ROTATING, clock=clock)
    for n in range(count):
        log.append(event(n))
        log.flush()
        if clock is not None:
            clock.advance(3600)
    log.close()
    return path


def archive(
    path: Path,
    destination: Path,
    *,
    keep: int | None = 0,
    before: datetime | None = None,
    fs: FileSystem | None = None,
    key: bytes = KEY,
) -> ArchiveResult:
    return archive_chain(
        path, key, destination, keep=keep, before=before, clock=FakeClock(),
        archivist=ARCHIVIST, fs=fs,
    )  # fmt: skip


def anchor_json(path: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(anchor_path(path).read_bytes())
    return result


def live_anchor(path: Path) -> Anchor:
    anchor = read_anchor(path, Signer(KEY))
    assert anchor is not None
    return anchor


def write_anchor(path: Path, anchor: Anchor, key: bytes = KEY) -> None:
    """Put an anchor signed with `key` in place of the live one (a forgery by a key holder, or
    one made with another key)."""
    anchor_path(path).write_bytes(seal(Signer(key), anchor))


class Crash(Exception):
    """Stands for a kill: the archiver stops here, with what is on disk so far."""


class CrashingFs(FileSystem):
    """Counts the archiver's changes to the disk, and crashes at the `at`-th (never if None)."""

    def __init__(self, at: int | None = None) -> None:
        self.at, self.steps = at, 0

    def _step(self) -> None:
        self.steps += 1
        if self.steps == self.at:
            raise Crash(f"step {self.steps}")

    def open_truncate(self, path: Path) -> int:
        self._step()
        return super().open_truncate(path)

    def write(self, fd: int, data: bytes) -> int:
        self._step()
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._step()
        super().fsync(fd)

    def rename(self, source: Path, target: Path) -> None:
        self._step()
        super().rename(source, target)

    def fsync_dir(self, directory: Path) -> None:
        self._step()
        super().fsync_dir(directory)

    def remove(self, path: Path) -> None:
        self._step()
        super().remove(path)
