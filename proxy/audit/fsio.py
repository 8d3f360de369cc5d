"""The few file-system calls the audit sink and the archiver (`archiving.py`) make, behind one
injectable object.

`FileSystem` is the real thing (thin wrappers over `os`); tests subclass it to fail a write or an
fsync with ENOSPC, to count fsyncs, to hold an fsync until they let it go, or to write a record
in pieces so that a `kill -9` lands mid-line. Reads (recovery, verification) use plain files: a
failing read is an error to report, not a state to simulate.

`replace_atomically` is the write-temp, fsync, rename, fsync-directory sequence: a crash at any
point leaves either the old file or the new one, never a mix.
"""

from __future__ import annotations

import os
from pathlib import Path

from mypy_extensions import mypyc_attr

FILE_MODE = 0o600  # audit records hold queries: readable by pgwarden's user only


# Compiled with the hot path (proxy/native.py), and still subclassed by the fault tests.
@mypyc_attr(allow_interpreted_subclasses=True)
class FileSystem:
    def open_append(self, path: Path) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(path, flags, FILE_MODE)

    def open_truncate(self, path: Path) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        return os.open(path, flags, FILE_MODE)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def dup(self, fd: int) -> int:
        return os.dup(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def truncate(self, path: Path, size: int) -> None:
        os.truncate(path, size)

    def rename(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def remove(self, path: Path) -> None:
        os.unlink(path)

    def fsync_dir(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_all(self, fd: int, data: bytes) -> None:
        """Write every byte (a short write is retried; the error of a failing one raises)."""
        written = self.write(fd, data)
        while written < len(data):
            written += self.write(fd, data[written:])

    def replace_atomically(self, path: Path, data: bytes) -> None:
        temporary = path.with_name(path.name + ".tmp")
        fd = self.open_truncate(temporary)
        try:
            self.write_all(fd, data)
            self.fsync(fd)
        finally:
            self.close(fd)
        self.rename(temporary, path)
        self.fsync_dir(path.parent)
