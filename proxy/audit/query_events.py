"""Query events: what a session sent and how each query ended (`query.*`).

Written *before* the message is forwarded: each carries the session's per-session query number
`n`, and a later `query.outcome` with the same `n` says how it ended. `recorder.py` builds them
from wire messages; text and values are already redacted and cut to size when they get here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import ClassVar

from proxy.audit.events import AuditEvent
from proxy.audit.records import JSONValue


@dataclass(frozen=True, slots=True)
class Param:
    """A Bind parameter or FunctionCall argument: text, base64 (binary) or None (SQL NULL).

    `size` is the original length in bytes; `truncated` says the value holds only a prefix.
    """

    value: str | None
    binary: bool = False
    size: int = 0
    truncated: bool = False

    def to_json(self) -> JSONValue:
        if self.value is None:
            return None
        shown: dict[str, JSONValue] = {"base64" if self.binary else "text": self.value}
        if self.truncated:
            shown["bytes"] = self.size
            shown["truncated"] = True
        return shown


@dataclass(frozen=True, slots=True)
class SimpleQuery(AuditEvent):
    """A simple-protocol Query, recorded as sent (several statements stay one record)."""

    kind: ClassVar[str] = "query.simple"
    session_id: str
    n: int
    text: str
    text_bytes: int
    truncated: bool


@dataclass(frozen=True, slots=True)
class ParseStatement(AuditEvent):
    kind: ClassVar[str] = "query.parse"
    session_id: str
    n: int
    statement: str  # "" is the unnamed statement
    text: str
    text_bytes: int
    truncated: bool
    param_types: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class BindPortal(AuditEvent):
    """`params_omitted` counts parameters left out once the size budget was spent;
    `redacted` says the statement sets a password, so every value shows as `***`."""

    kind: ClassVar[str] = "query.bind"
    session_id: str
    n: int
    portal: str
    statement: str
    params: tuple[Param, ...]
    params_omitted: int
    redacted: bool


@dataclass(frozen=True, slots=True)
class ExecutePortal(AuditEvent):
    kind: ClassVar[str] = "query.execute"
    session_id: str
    n: int
    portal: str
    max_rows: int  # 0: all rows


@dataclass(frozen=True, slots=True)
class FunctionCalled(AuditEvent):
    kind: ClassVar[str] = "query.function_call"
    session_id: str
    n: int
    function_oid: int
    args: tuple[Param, ...]
    args_omitted: int


class CopyDirection(StrEnum):
    IN = "in"  # COPY ... FROM STDIN: the client sends data
    OUT = "out"  # COPY ... TO STDOUT: the database sends data


@dataclass(frozen=True, slots=True)
class CopyTransfer(AuditEvent):
    """The data of a COPY started by query `n` (written when the copy ends)."""

    kind: ClassVar[str] = "query.copy"
    session_id: str
    n: int
    direction: CopyDirection
    bytes: int


class OutcomeStatus(StrEnum):
    OK = "ok"
    SUSPENDED = "suspended"  # Execute's row limit was reached (PortalSuspended)
    ERROR = "error"
    SKIPPED = "skipped"  # an earlier error in the same extended-protocol batch skipped it
    UNFINISHED = "unfinished"  # the session ended before the database answered


@dataclass(frozen=True, slots=True)
class QueryOutcome(AuditEvent):
    """How query `n` ended: command tags (one per statement) and rows, or SQLSTATE and message."""

    kind: ClassVar[str] = "query.outcome"
    session_id: str
    n: int
    status: OutcomeStatus
    tags: tuple[str, ...]
    rows: int | None
    sqlstate: str | None
    error: str | None
    duration: timedelta
