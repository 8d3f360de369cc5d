"""Shared pieces of the audit tests: a key, a log on a temporary path, a file system that fails
or holds fsyncs on demand, and readers for what is on disk."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.audit.encode import EncodedRecord
from proxy.audit.events import LoginFailed
from proxy.audit.fsio import FileSystem
from proxy.audit.log import AuditLog, FsyncPolicy, SinkOptions
from proxy.audit.recorder import SessionRecorder, Written
from proxy.audit.records import head_path, log_files
from proxy.audit.redact import Redactor
from proxy.audit.shaping import QueryLimits, Shaper
from proxy.cli import main
from proxy.wire import Frame, MessageReader, Query, encode
from proxy.wire.framing import NEED_DATA
from tests.fixtures.clock import FakeClock

if TYPE_CHECKING:  # not at run time: the kill test's child process imports this module
    import pytest

KEY = b"0123456789abcdef-test-audit-key"
QUIET = SinkOptions(head_interval=3600, retry_interval=0)  # heads only at open/rotate/close


class FaultyFs(FileSystem):
    """A FileSystem that counts fsyncs and fails or holds calls when a test says so."""

    def __init__(self) -> None:
        self.fsyncs = 0
        self.write_error: int | None = None  # errno to raise from write()
        self.partial_write = False  # with write_error: write half the data first
        self.truncate_error: int | None = None
        self.fsync_error: int | None = None
        self.rename_error: Callable[[Path, Path], int | None] = lambda _s, _t: None
        self.open_error: int | None = None
        self.hold: threading.Event | None = None  # fsync waits for it
        self.fsync_entered = threading.Event()
        self._lock = threading.Lock()

    def write(self, fd: int, data: bytes) -> int:
        if self.write_error is not None:
            if self.partial_write and len(data) > 1:
                os.write(fd, data[: len(data) // 2])
            raise OSError(self.write_error, os.strerror(self.write_error))
        return super().write(fd, data)

    def truncate(self, path: Path, size: int) -> None:
        if self.truncate_error is not None:
            raise OSError(self.truncate_error, os.strerror(self.truncate_error))
        super().truncate(path, size)

    def fsync(self, fd: int) -> None:
        self.fsync_entered.set()
        if self.hold is not None:
            assert self.hold.wait(10), "the test never released the fsync"
        if self.fsync_error is not None:
            raise OSError(self.fsync_error, os.strerror(self.fsync_error))
        with self._lock:
            self.fsyncs += 1
        super().fsync(fd)

    def open_append(self, path: Path) -> int:
        if self.open_error is not None:
            raise OSError(self.open_error, os.strerror(self.open_error))
        return super().open_append(path)

    def rename(self, source: Path, target: Path) -> None:
        if (error := self.rename_error(source, target)) is not None:
            raise OSError(error, os.strerror(error))
        super().rename(source, target)


ENOSPC = errno.ENOSPC
EIO = errno.EIO


def open_log(
    path: Path,
    *,
    clock: FakeClock | None = None,
    fs: FileSystem | None = None,
    options: SinkOptions = QUIET,
    **kwargs: Any,
) -> AuditLog:
    return AuditLog(path, KEY, clock=clock or FakeClock(), options=options, fs=fs, **kwargs)


def event(n: int = 0) -> LoginFailed:
    return LoginFailed(f"user{n}", "orders", "10.0.0.1", "wrong_password")


def frames_of(*messages: Any) -> list[Frame]:
    """Messages as the relay hands them over: encoded, then split into frames."""
    reader = MessageReader()
    for message in messages:
        reader.feed(encode(message))
    result = []
    while (frame := reader.next_message()) is not NEED_DATA:
        assert isinstance(frame, Frame)
        result.append(frame)
    return result


def recorder(
    redactor: Redactor | None = None,
    limits: QueryLimits | None = None,
    monotonic: Callable[[], float] = lambda: 0.0,
    copy_bytes: Callable[[Any], int] = lambda _direction: 0,
) -> SessionRecorder:
    """A query recorder for session `s1`."""
    shaper = Shaper(redactor or Redactor(), limits or QueryLimits())
    return SessionRecorder("s1", shaper, monotonic, copy_bytes)


def query_record(text: str) -> Written:
    """The record of a simple Query of `text` (no NUL: a protocol String cannot hold one)."""
    (record,) = recorder().client_frames(frames_of(Query(text)))
    assert isinstance(record, EncodedRecord)
    return record


def records(path: Path) -> list[dict[str, Any]]:
    """Every record of every file, in chain order."""
    result = []
    for file in log_files(path):
        result += [json.loads(line) for line in file.read_bytes().splitlines()]
    return result


def lines_of(file: Path) -> list[bytes]:
    return file.read_bytes().splitlines(keepends=True)


def write_lines(file: Path, lines: list[bytes]) -> None:
    file.write_bytes(b"".join(lines))


def head_seq(path: Path) -> int:
    return int(json.loads(head_path(path).read_bytes())["seq"])


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) for the background thread to do something."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the audit thread"
        time.sleep(0.002)


def build_log(path: Path, count: int, *, max_file_bytes: int = 4096) -> None:
    """A closed log of `count` appended events over several files (rotated deterministically)."""
    options = SinkOptions(
        fsync=FsyncPolicy.NEVER, head_interval=3600, retry_interval=0, max_file_bytes=max_file_bytes
    )
    log = open_log(path, options=options)
    for n in range(count):
        log.append(event(n))
        log.flush()
    log.close()


class VerifyCommand:
    """`pgwarden audit verify ...` in this process, as `main` runs it: the exit status (argparse's
    for a usage error), stdout and stderr. tests/unit/commands/test_audit_verify.py runs the
    real process for what only a process shows (exit statuses, the environment)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self._capsys, self._monkeypatch = capsys, monkeypatch

    def __call__(
        self, *args: str | Path, env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        for name, value in (env or {}).items():
            self._monkeypatch.setenv(name, value)
        self._capsys.readouterr()  # only this command's output
        try:
            code = main(["audit", "verify", *map(str, args)])
        except SystemExit as exc:  # a usage error
            code = exc.code if isinstance(exc.code, int) else 2
        out, err = self._capsys.readouterr()
        return code, out, err
