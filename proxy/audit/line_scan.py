"""Finding the few lines of an audit file that matter, without decoding the rest.

A page that shows one session reads logs of hundreds of megabytes, of which it needs a few
hundred lines. `Scan.lines(path, needles)` reads the file in blocks and looks for byte strings
(`"session_id":"<id>"`, `"kind":"audit.opened"`) with `bytes.find`, in C, over each whole
block; only the lines holding one are cut out and handed on. A needle that begins and ends with
a quote can only match a real member of a record: inside a JSON string every quote is escaped.

`decode(line)` turns such a line into its record (orjson; the standard library's decoder for the
rare line holding a lone surrogate, an undecodable byte the writer escaped as `\\udcXX`, which
orjson refuses), or None for a line that is not one.

Bounds: a `Scan` reads at most `budget` bytes over all the files it is asked for, then stops
(`stopped`); a line with no end (torn by a crash, or still being written) or longer than
MAX_LINE_BYTES is skipped and counted, never raised; a file gone since it was listed (renamed
by a rotation, removed by `pgwarden audit archive`) is skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import orjson

BLOCK_BYTES: Final = 4 * 1024 * 1024  # read at a time: large enough that `find` runs in C
# A record is far shorter (query text is cut at audit.max_query_bytes, 1 MiB by default); a
# longer line is skipped rather than held.
MAX_LINE_BYTES: Final = 64 * 1024 * 1024


@dataclass(slots=True)
class Scan:
    """What one reading of the log spent and met (see the module docstring)."""

    budget: int  # bytes it may read in all
    scanned: int = 0
    stopped: bool = False  # the budget ran out before a file was read to its end
    skipped_lines: int = 0  # torn, garbled or overlong lines that held a needle
    missing_files: int = 0
    _read_to: dict[Path, int] = field(default_factory=dict)  # how far each file was read

    def lines(
        self, path: Path, needles: Sequence[bytes], start: int = 0
    ) -> Iterator[tuple[int, bytes]]:
        """(offset, line) of every complete line of `path`, from offset `start`, that holds one
        of `needles`, in file order."""
        try:
            file = path.open("rb")
        except FileNotFoundError:
            self.missing_files += 1
            return
        with file:
            file.seek(start)
            yield from self._blocks(file, path, needles, start)

    def _read(self, file: IO[bytes], path: Path, position: int) -> bytes | None:
        """The next block at `position`, None once the budget is spent. Bytes of a file read
        before (a second pass over it) are not counted again."""
        before = self._read_to.get(path, 0)
        room = self.budget - self.scanned + max(0, before - position)
        if room <= 0:
            self.stopped = True
            return None
        block = file.read(min(BLOCK_BYTES, room))
        end = position + len(block)
        self.scanned += max(0, end - max(position, before))
        self._read_to[path] = max(before, end)
        return block

    def _blocks(
        self, file: IO[bytes], path: Path, needles: Sequence[bytes], at: int
    ) -> Iterator[tuple[int, bytes]]:
        carry, overlong = b"", False  # `at`: the file offset of carry's first byte
        while True:
            block = self._read(file, path, file.tell())
            if block is None:
                return
            if not block:
                if carry and any(needle in carry for needle in needles):
                    self.skipped_lines += 1  # the last line has no end
                return
            if overlong:  # dropping the rest of a line too long to hold
                cut = block.find(b"\n") + 1
                at += cut or len(block)
                if not cut:
                    continue
                overlong, block = False, block[cut:]
            data = carry + block
            end = data.rfind(b"\n") + 1
            if end == 0 and len(data) > MAX_LINE_BYTES:
                self.skipped_lines += 1
                carry, overlong, at = b"", True, at + len(data)
                continue
            for offset, line in _holding(data, end, needles):
                yield at + offset, line
            carry, at = data[end:], at + end


def _holding(data: bytes, end: int, needles: Sequence[bytes]) -> list[tuple[int, bytes]]:
    """The lines of `data[:end]` (whole lines) that hold a needle, in order."""
    found: dict[int, int] = {}  # line start → line end
    for needle in needles:
        hit = data.find(needle, 0, end)
        while hit >= 0:
            first = data.rfind(b"\n", 0, hit) + 1
            last = data.find(b"\n", hit, end) + 1
            found[first] = last
            hit = data.find(needle, last, end)
    return [(first, data[first : found[first]]) for first in sorted(found)]


def decode(line: bytes) -> dict[str, Any] | None:
    """The record on this line, or None if it is not a JSON object."""
    try:
        body = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            body = _printable(json.loads(line))
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
    return body if isinstance(body, dict) else None


def _printable(value: Any) -> Any:
    """Lone surrogates (undecodable bytes, as the writer kept them) shown as `\\xNN`, so that
    every string can be encoded as UTF-8 for a page."""
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate no undecodable byte stands for: shown as \\udXXX
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")
    if isinstance(value, list):
        return [_printable(item) for item in value]
    if isinstance(value, dict):
        return {key: _printable(item) for key, item in value.items()}
    return value
