"""The audit log's on-disk format: one MAC-chained JSON record per line, files, and the head.

A record is one line of ASCII JSON, keys in this order::

    {"seq":7,"ts":"2026-01-05T09:00:00.000000Z","kind":"query.batch",<fields>,"prev":"<hex>",
     "mac":"<hex>"}

`seq` counts records from 1 across all files; `prev` is the `mac` of record `seq - 1` (64 zeros
for the first record); `mac` is HMAC-SHA-256 over `MAC_DOMAIN` plus the exact bytes of the line
without its `,"mac":"..."` member (that is, the line up to `"prev":"<hex>"` followed by `}`).
The MAC covers the bytes as written, so a verifier needs no canonical re-serialisation: strip the
last member, recompute, compare. `json.dumps(ensure_ascii=True)` escapes every control character,
DEL, every non-ASCII character (bidi overrides, U+2028) and the lone surrogates that stand for
undecodable bytes (`\\udc80`), so a value can never end a line or forge one, and the file is
plain ASCII.

Files: the active file is the configured path (`audit.jsonl`); at rotation it is renamed to
`audit.jsonl.<seq of its first record, 12 digits>`, so names sort in chain order and a missing
file shows as a gap in `seq`. The head (`audit.jsonl.head`) anchors the last durable record
(seq and mac) with its own MAC under `HEAD_DOMAIN`; it is replaced atomically.

Chains: one per writing process, each named after the configured path (`chain_path`): the
server's own (`audit.jsonl`), each worker's (`audit.worker1.jsonl`), the token commands'
(`audit.commands.jsonl`). With a PostgreSQL state store every server is a replica of several,
and each of its chains carries the replica's name (`audit.a.jsonl`, `audit.a.worker1.jsonl`,
`audit.a.commands.jsonl`), so that the chains of every replica can be gathered in one
directory, and replicas that share one never write one file; their `audit.opened` records name
the file, hence the replica. The replica's name sits where a worker's does, so a name whose last
part is a process's (`worker1`, `commands`) or a side file's (`head`, a number) would stand for
another chain's file: `proxy.config.check_replica` refuses those.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proxy.config import check_replica
from proxy.policy.models import SecretRef

# 2: lifecycle records are written ahead of their state-store commit, each run of them settled
# by a `lifecycle.outcome` record (1: written after the commit, with no outcome).
# 3: one `query.batch` record per client round trip, its outcome carried by a later record
# (`query_events.py`); 1 and 2: a record per Query, Parse, Bind, Execute and per outcome.
FORMAT_VERSION = 3
GENESIS = "0" * 64  # `prev` of the very first record
MAC_DOMAIN = b"pgwarden-audit-record-v1\n"
HEAD_DOMAIN = b"pgwarden-audit-head-v1\n"
MIN_KEY_BYTES = 16  # below this an HMAC key can be guessed
ENVELOPE = frozenset({"seq", "ts", "kind", "prev", "mac"})  # event fields may not use these
HEAD_SUFFIX = ".head"
ANCHOR_SUFFIX = ".anchor"  # the archive anchor (`archive.py`)
ARCHIVE_DIGITS = 12

_TS = re.compile(r"[0-9T:.Z-]+")
_MAC_TAIL = re.compile(rb',"mac":"([0-9a-f]{64})"\}\n\Z')

JSONValue = str | int | float | bool | None | list["JSONValue"] | dict[str, "JSONValue"]
Fields = dict[str, JSONValue]


class BadRecord(ValueError):
    """A line that is not a well-formed, authentic record; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Record:
    """A parsed, MAC-checked record (its chain position is checked by the caller)."""

    seq: int
    kind: str
    prev: str
    mac: str
    body: dict[str, Any]


def check_key(key: bytes) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the audit HMAC key must be at least {MIN_KEY_BYTES} bytes")
    return key


def load_key(ref: SecretRef) -> bytes:
    """The HMAC key as the server reads it: the secret's text, UTF-8 encoded."""
    return check_key(ref.read().encode("utf-8"))


def format_ts(when: datetime) -> str:
    """`2026-01-05T09:00:00.000000Z`: UTC, always with microseconds."""
    global _second  # noqa: PLW0603 - a one-entry cache, replaced whole (thread-safe)
    if when.tzinfo is not UTC:  # the clock's own times skip the conversion
        when = when.astimezone(UTC)
    # Called for every write: `isoformat` with a timespec costs more than the rest of a record's
    # envelope, and the date and time up to the second change once a second.
    second, text = _second
    if (now := when.timestamp() // 1) != second:
        second, text = _second = (now, when.isoformat(timespec="seconds")[:19])
    return f"{text}.{when.microsecond:06d}Z"


_second = (math.nan, "")  # (whole seconds since the epoch, their `YYYY-MM-DDTHH:MM:SS`)


def dump_fields(fields: Fields) -> str:
    """The event's members as they appear in the line: `"a":1,"b":"x"` (no braces)."""
    return json.dumps(fields, ensure_ascii=True, separators=(",", ":"), allow_nan=False)[1:-1]


class Signer:
    """Makes and checks record lines and heads under one key."""

    def __init__(self, key: bytes) -> None:
        self._key = check_key(key)
        self._records = hmac.new(key, MAC_DOMAIN, hashlib.sha256)
        self._heads = hmac.new(key, HEAD_DOMAIN, hashlib.sha256)

    def line(self, seq: int, ts: str, kind: str, body: str, prev: str) -> tuple[bytes, str]:
        """The record's line (with its newline) and its mac; `body` comes from `dump_fields`
        (or `encode.event_members`), `ts` from `format_ts`."""
        data, _, mac = self.lines(seq - 1, ts, ((kind, body),), prev)
        return data, mac

    def lines(
        self, seq: int, ts: str, records: Iterable[tuple[str, str]], prev: str
    ) -> tuple[bytes, int, str]:
        """The lines of records `seq + 1`, `seq + 2`, ... (kind, body), chained from `prev`, all
        with the time `ts`, joined for one write; and the last one's seq and mac."""
        quoted_ts = f'"{ts}"' if _TS.fullmatch(ts) else json.dumps(ts)
        keyed, parts = self._records, list[bytes]()
        for kind, body in records:
            seq += 1
            unsigned = (f'{{"seq":{seq},"ts":{quoted_ts},"kind":{_quoted_kind(kind)}'
                        f'{"," if body else ""}{body},"prev":"{prev}"').encode("ascii")  # fmt: skip
            # The key and domain are hashed once (`_records`); a copy goes on from there.
            mac = keyed.copy()
            mac.update(unsigned)
            mac.update(b"}")
            prev = mac.hexdigest()
            parts += (unsigned, b',"mac":"', prev.encode("ascii"), b'"}\n')
        return b"".join(parts), seq, prev

    def parse(self, line: bytes) -> Record:
        """Check one line (with its newline) and return the record; raises BadRecord."""
        match = _MAC_TAIL.search(line)
        if match is None:
            raise BadRecord("not a record line (no mac at its end)")
        unsigned = line[: match.start()] + b"}"
        mac = match.group(1).decode("ascii")
        if not hmac.compare_digest(self._mac(self._records, unsigned), mac):
            raise BadRecord("mac does not match: the record was altered, or another key wrote it")
        try:
            body = json.loads(line, object_pairs_hook=_no_duplicates)
        except (ValueError, UnicodeDecodeError) as exc:  # authentic but unparseable: a bug
            raise BadRecord(f"not valid JSON ({exc})") from exc
        seq, kind, prev = body.get("seq"), body.get("kind"), body.get("prev")
        if type(seq) is not int or not isinstance(kind, str) or not isinstance(prev, str):
            raise BadRecord("seq, kind or prev is missing or of the wrong type")
        return Record(seq, kind, prev, mac, body)

    def head(self, seq: int, mac: str, file: str, ts: str) -> bytes:
        unsigned = json.dumps(
            {"seq": seq, "mac": mac, "file": file, "ts": ts}, separators=(",", ":")
        ).encode("ascii")
        tag = self._mac(self._heads, unsigned)
        return unsigned[:-1] + b',"head_mac":"' + tag.encode("ascii") + b'"}\n'

    def parse_head(self, data: bytes) -> Head:
        try:
            body = json.loads(data)
            unsigned = {k: body[k] for k in ("seq", "mac", "file", "ts")}
            tag = body["head_mac"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise BadRecord("the head file is not valid") from exc
        raw = json.dumps(unsigned, separators=(",", ":")).encode("ascii")
        if not isinstance(tag, str) or not hmac.compare_digest(self._mac(self._heads, raw), tag):
            raise BadRecord("the head file's mac does not match")
        if type(unsigned["seq"]) is not int or not isinstance(unsigned["mac"], str):
            raise BadRecord("the head file is not valid")
        return Head(unsigned["seq"], unsigned["mac"], str(unsigned["file"]), str(unsigned["ts"]))

    def tag(self, domain: bytes, data: bytes) -> str:
        """HMAC-SHA-256 of `domain + data` under this key: for the other signed files (the
        archive anchor, `archive.py`), each with its own domain so that none passes for another."""
        return hmac.digest(self._key, domain + data, "sha256").hex()

    @staticmethod
    def _mac(state: hmac.HMAC, data: bytes) -> str:
        copy = state.copy()
        copy.update(data)
        return copy.hexdigest()


@dataclass(frozen=True, slots=True)
class Head:
    """The anchored end of the chain: the log must reach at least `seq`, with this `mac`."""

    seq: int
    mac: str
    file: str
    ts: str


@functools.lru_cache(maxsize=256)
def _quoted_kind(kind: str) -> str:
    return json.dumps(kind)  # a handful of constants: worked out once each


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key appears twice")
    return result


def head_path(active: Path) -> Path:
    return active.with_name(active.name + HEAD_SUFFIX)


def chain_path(audit_log: Path, replica: str = "", process: str = "") -> Path:
    """The active file of one chain: `<stem>[.<replica>][.<process>]<suffix>` beside `audit_log`
    (`replica` "": a server with a SQLite store; `process` "": the server's own process)."""
    name = ".".join(part for part in (audit_log.stem, replica, process) if part)
    return audit_log.with_name(name + audit_log.suffix)


def worker_audit_path(audit_log: Path, worker: int, replica: str = "") -> Path:
    """Worker 0 (the primary) writes the server's chain; worker k its own, `<stem>.worker<k>
    <suffix>` (`proxy.workers`: one chain per process, since each appends on its own)."""
    return chain_path(audit_log, replica, f"worker{worker}" if worker else "")


def commands_audit_path(audit_log: Path, replica: str = "") -> Path:
    """The chain the server host's commands write (`pgwarden token create|revoke`): each runs as
    its own process, and a chain has one writer at a time (they take `<chain>.lock`)."""
    return chain_path(audit_log, replica, COMMANDS)


def worker_audit_paths(audit_log: Path, max_workers: int, replica: str = "") -> list[Path]:
    """The primary's audit log and every worker's that exists beside it, in worker order."""
    workers = (worker_audit_path(audit_log, k, replica) for k in range(1, max_workers))
    return [worker_audit_path(audit_log, 0, replica), *(p for p in workers if p.exists())]


COMMANDS = "commands"
_PROCESS = re.compile(r"worker([1-9][0-9]*)|commands")


# Last parts of a replica's name that would make its chain another file: a process's (worker1,
# commands) or, when the configured path has no suffix, a side file's (`audit.a.head`).
@dataclass(frozen=True, slots=True, order=True)
class Chain:
    """Whose chain a file is: a replica's ("": a server with a SQLite store), and which process
    of it wrote it (worker 0: the server's own; `commands`: the token commands)."""

    replica: str
    commands: bool
    worker: int

    def path(self, audit_log: Path) -> Path:
        if self.commands:
            return commands_audit_path(audit_log, self.replica)
        return worker_audit_path(audit_log, self.worker, self.replica)

    def describe(self) -> str:
        process = "token commands" if self.commands else f"worker {self.worker}"
        owner = f"replica {self.replica}" if self.replica else "the server"
        return owner if not (self.commands or self.worker) else f"{owner}, {process}"


def chain_of(audit_log: Path, name: str) -> Chain | None:
    """The chain whose active file is called `name`, among those named after `audit_log`; None
    for any other file (archives, heads, anchors, other logs)."""
    stem, suffix = audit_log.stem, audit_log.suffix
    if not (name.startswith(stem) and name.endswith(suffix)) or len(name) < len(stem + suffix):
        return None
    middle = name[len(stem) : len(name) - len(suffix)]
    if not middle:
        return Chain("", False, 0)
    if not middle.startswith("."):
        return None
    replica, _, last = middle[1:].rpartition(".")
    process = _PROCESS.fullmatch(last)
    if process is None:
        replica, process_text, worker = middle[1:], "", 0
    else:
        process_text, worker = last, int(process.group(1) or 0)
    if replica and check_replica(replica) is not None:
        return None
    return Chain(replica, process_text == COMMANDS, worker)


def chains_beside(audit_log: Path) -> list[Chain]:
    """Every chain named after `audit_log` in its directory, in order (replica, then process):
    those with an active file, and those whose file is gone but whose head or anchor is left."""
    found: set[Chain] = set()
    if audit_log.parent.is_dir():
        for candidate in audit_log.parent.iterdir():
            name = candidate.name
            for side in (HEAD_SUFFIX, ANCHOR_SUFFIX):
                name = name.removesuffix(side) if name.endswith(side) else name
            if (chain := chain_of(audit_log, name)) is not None:
                found.add(chain)
    return sorted(found)


def archive_path(active: Path, first_seq: int) -> Path:
    return active.with_name(f"{active.name}.{first_seq:0{ARCHIVE_DIGITS}d}")


def archive_seq(active: Path, candidate: Path) -> int | None:
    """The first seq an archive's name promises, or None if `candidate` is not an archive."""
    prefix = active.name + "."
    digits = candidate.name[len(prefix) :]
    if candidate.name.startswith(prefix) and len(digits) == ARCHIVE_DIGITS and digits.isdigit():
        return int(digits) if digits.isascii() else None
    return None


def log_files(active: Path) -> list[Path]:
    """Every file of the log in chain order: archives by their first seq, then the active file."""
    archives = []
    if active.parent.is_dir():
        for candidate in active.parent.iterdir():
            seq = archive_seq(active, candidate)
            if seq is not None:
                archives.append((seq, candidate))
    files = [path for _, path in sorted(archives)]
    if active.exists():
        files.append(active)
    return files
