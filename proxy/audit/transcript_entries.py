"""A session's query records as transcript entries: what `transcript.py` shows for each.

One entry per record: a round trip (`query.batch`, `query.function_call`; formats 1 and 2 wrote
one record per Query, Parse, Bind and Execute message instead), or the data of a COPY
(`query.copy`). Its steps, parameters and texts are exactly as recorded (`query_events.py`
describes the shapes): already redacted, already cut; nothing here can show more. Its outcome
comes from a later record (`done`; formats 1 and 2: `query.outcome`), by its number `n`.

A record that decodes as JSON but does not have its kind's shape raises `Garbled`: the reader
skips and counts it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final


class Garbled(ValueError):
    """A line that is not a record of the shape its kind has."""


class EntryKind(StrEnum):
    QUERY = "query"  # a simple-protocol Query: one step, its text (one statement or several)
    EXTENDED = "extended"  # extended-protocol steps, up to a Sync (or on, when `continues`)
    FUNCTION_CALL = "function_call"
    COPY = "copy"  # the data of a COPY that round trip `n` started


ROUND_TRIPS: Final = frozenset({EntryKind.QUERY, EntryKind.EXTENDED, EntryKind.FUNCTION_CALL})


class StepAction(StrEnum):
    QUERY = "query"
    PARSE = "parse"
    BIND = "bind"
    EXECUTE = "execute"
    CLOSE = "close"


class NoOutcome(StrEnum):
    """Why a round trip shows no outcome."""

    RUNNING = "running"  # not answered yet: the session is live
    LOST = "lost"  # never recorded: pgwarden stopped, or its log failed, before writing it
    NOT_READ = "not_read"  # the scan stopped (max_bytes_scanned) before it could be seen


@dataclass(frozen=True, slots=True)
class Param:
    """A Bind parameter or FunctionCall argument as recorded (`***` where it was redacted)."""

    value: str | None  # its text, or base64 when `binary`; None: SQL NULL
    binary: bool = False
    size: int | None = None  # its size in bytes, when `truncated`
    truncated: bool = False  # `value` holds only its first audit.max_param_bytes


@dataclass(frozen=True, slots=True)
class Step:
    """One message of a round trip; the fields its action does not have keep their defaults."""

    action: StepAction
    text: str = ""  # query, parse: the statement text
    text_bytes: int | None = None  # its size in bytes, when `text_truncated`
    text_truncated: bool = False  # cut at audit.max_query_bytes
    statement: str = ""  # parse: the name given; bind: the one bound; close: the one closed
    portal: str = ""  # bind: the name given; execute: the one run; close: the one closed
    params: tuple[Param, ...] = ()  # bind
    params_omitted: int = 0  # bind: values left out once the record's size budget was spent
    redacted: bool = False  # bind: the statement takes a password, so every value is `***`
    param_types: tuple[int, ...] = ()  # parse: type OIDs, when the client gave them
    max_rows: int = 0  # execute: the row limit (0: all rows)


@dataclass(frozen=True, slots=True)
class Outcome:
    n: int
    status: str  # an OutcomeStatus value: ok, error, skipped, unfinished (formats 1-2: suspended)
    tags: tuple[str | None, ...]  # a command tag per statement run ("": empty; None: suspended)
    rows: int | None  # the tags' row counts summed
    duration: float  # seconds, from the record to the answer
    sqlstate: str | None = None  # an error's
    error: str | None = None  # an error's message
    failed_step: int | None = None  # index in `steps` of the step that failed (None: the COMMIT)


@dataclass(frozen=True, slots=True)
class Entry:
    """One record of the session: a round trip (`kind` in ROUND_TRIPS) or a COPY's data."""

    n: int  # the round trip's number in the session (a COPY: the round trip that started it)
    kind: EntryKind
    seq: int  # the record's
    at: datetime  # when it was written: before the database saw it
    steps: tuple[Step, ...] = ()
    continues: bool = False  # the batch goes on in the next entry (no Sync yet)
    function_oid: int | None = None
    args: tuple[Param, ...] = ()
    args_omitted: int = 0
    copy_direction: str | None = None  # a CopyDirection value: in (from the client), out
    copy_bytes: int | None = None
    outcome: Outcome | None = None
    no_outcome: NoOutcome | None = None  # why `outcome` is None, for a round trip expecting one
    # Formats 1 and 2 wrote a Parse's or Bind's outcome only when it failed or was skipped.
    outcome_expected: bool = True

    def settled(self, outcome: Outcome) -> Entry:
        return dataclasses.replace(self, outcome=outcome)

    def unsettled(self, why: NoOutcome) -> Entry:
        return dataclasses.replace(self, no_outcome=why)


def entry_of(body: dict[str, Any]) -> Entry | None:
    """The entry of a query record; None for any other record."""
    kind = body.get("kind")
    shape = _SHAPES.get(kind) if isinstance(kind, str) else None
    if shape is None:
        return None
    n, seq, at = integer(body, "n"), integer(body, "seq"), timestamp(body, "ts")
    return shape(body, n, seq, at)


def outcomes_of(body: dict[str, Any]) -> list[Outcome]:
    """The outcomes a record carries."""
    if body.get("kind") == "query.outcome":
        return [_outcome(body)]
    return [_outcome(item) for item in body.get("done") or ()]


def queries_in(body: dict[str, Any]) -> int:
    """Query, Execute and FunctionCall messages in a record (as `SessionEnded.queries` counts)."""
    kind = body.get("kind")
    if kind in ("query.function_call", "query.simple", "query.execute"):
        return 1
    steps = body.get("steps") if kind == "query.batch" else None
    if not isinstance(steps, list):
        return 0
    return sum(isinstance(s, dict) and ("query" in s or "execute" in s) for s in steps)


# -- format 3 -------------------------------------------------------------------------------


def _batch(body: dict[str, Any], n: int, seq: int, at: datetime) -> Entry:
    steps = tuple(_step(item) for item in array(body, "steps"))
    simple = len(steps) == 1 and steps[0].action is StepAction.QUERY
    kind = EntryKind.QUERY if simple else EntryKind.EXTENDED
    return Entry(n, kind, seq, at, steps, continues=body.get("open") is True)


def _step(raw: object) -> Step:
    if not isinstance(raw, dict):
        raise Garbled("a step is not an object")
    size, cut = optional_integer(raw, "bytes"), raw.get("truncated") is True
    if "query" in raw:
        return Step(StepAction.QUERY, text(raw, "query"), size, cut)
    if "parse" in raw:
        types = tuple(_integers(raw.get("param_types", [])))
        return Step(StepAction.PARSE, text(raw, "text"), size, cut, statement=text(raw, "parse"),
                    param_types=types)  # fmt: skip
    if "bind" in raw:
        return Step(
            StepAction.BIND, portal=text(raw, "bind"), statement=text(raw, "statement"),
            params=_params(array(raw, "params")),
            params_omitted=optional_integer(raw, "omitted") or 0,
            redacted=raw.get("redacted") is True,
        )  # fmt: skip
    if "execute" in raw:
        limit = optional_integer(raw, "max_rows") or 0
        return Step(StepAction.EXECUTE, portal=text(raw, "execute"), max_rows=limit)
    if "close" in raw:
        name = text(raw, "name")
        if text(raw, "close") == "statement":
            return Step(StepAction.CLOSE, statement=name)
        return Step(StepAction.CLOSE, portal=name)
    raise Garbled("a step of no known action")


def _function_call(body: dict[str, Any], n: int, seq: int, at: datetime) -> Entry:
    return Entry(
        n, EntryKind.FUNCTION_CALL, seq, at, function_oid=integer(body, "function_oid"),
        args=_params(array(body, "args")), args_omitted=optional_integer(body, "args_omitted") or 0,
    )  # fmt: skip


def _copy(body: dict[str, Any], n: int, seq: int, at: datetime) -> Entry:
    return Entry(n, EntryKind.COPY, seq, at, copy_direction=text(body, "direction"),
                 copy_bytes=integer(body, "bytes"), outcome_expected=False)  # fmt: skip


def _outcome(raw: object) -> Outcome:
    if not isinstance(raw, dict):
        raise Garbled("an outcome is not an object")
    tags = tuple(_tag(tag) for tag in array(raw, "tags"))
    return Outcome(
        integer(raw, "n"), text(raw, "status"), tags, optional_integer(raw, "rows"),
        number(raw, "duration"), optional_text(raw, "sqlstate"), optional_text(raw, "error"),
        optional_integer(raw, "step"),
    )  # fmt: skip


def _params(values: list[Any]) -> tuple[Param, ...]:
    return tuple(_param(value) for value in values)


def _param(value: object) -> Param:
    """Format 3: a text value is a string; formats 1-2: `{"text": ...}` (both: `base64`)."""
    if value is None or isinstance(value, str):
        return Param(value)
    if not isinstance(value, dict):
        raise Garbled("a parameter is neither text, null nor an object")
    binary = "base64" in value
    shown = text(value, "base64" if binary else "text")
    cut = value.get("truncated") is True
    return Param(shown, binary, optional_integer(value, "bytes") if cut else None, cut)


def _tag(tag: object) -> str | None:
    if tag is None or isinstance(tag, str):
        return tag
    raise Garbled("a command tag is not a string")


# -- formats 1 and 2: a record per message ----------------------------------------------------


def _old_text(body: dict[str, Any]) -> tuple[str, int | None, bool]:
    """Text, its size when cut, whether cut (formats 1-2 always gave the size)."""
    cut = body.get("truncated") is True
    return text(body, "text"), optional_integer(body, "text_bytes") if cut else None, cut


def _simple(body: dict[str, Any], n: int, seq: int, at: datetime) -> Entry:
    return Entry(n, EntryKind.QUERY, seq, at, (Step(StepAction.QUERY, *_old_text(body)),))


def _parse(body: dict[str, Any], n: int, seq: int, at: datetime) -> Entry:
    types = tuple(_integers(body.get("param_types", [])))
    step = Step(StepAction.PARSE, *_old_text(body), statement=text(body, "statement"),
                param_types=types)  # fmt: skip
    return Entry(n, EntryKind.EXTENDED, seq, at, (step,), outcome_expected=False)


def _bind(body: dict[str, Any], n: int, seq: int, at: datetime) -> Entry:
    step = Step(
        StepAction.BIND, portal=text(body, "portal"), statement=text(body, "statement"),
        params=_params(array(body, "params")),
        params_omitted=optional_integer(body, "params_omitted") or 0,
        redacted=body.get("redacted") is True,
    )  # fmt: skip
    return Entry(n, EntryKind.EXTENDED, seq, at, (step,), outcome_expected=False)


def _execute(body: dict[str, Any], n: int, seq: int, at: datetime) -> Entry:
    limit = optional_integer(body, "max_rows") or 0
    step = Step(StepAction.EXECUTE, portal=text(body, "portal"), max_rows=limit)
    return Entry(n, EntryKind.EXTENDED, seq, at, (step,))


_SHAPES: dict[str, Callable[[dict[str, Any], int, int, datetime], Entry]] = {
    "query.batch": _batch,
    "query.function_call": _function_call,  # formats 1-3 alike
    "query.copy": _copy,
    "query.simple": _simple,
    "query.parse": _parse,
    "query.bind": _bind,
    "query.execute": _execute,
}


# -- typed fields ----------------------------------------------------------------------------


def text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise Garbled(f"{key} is not a string")
    return value


def optional_text(body: dict[str, Any], key: str) -> str | None:
    return None if body.get(key) is None else text(body, key)


def integer(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if type(value) is not int:
        raise Garbled(f"{key} is not an integer")
    return value


def optional_integer(body: dict[str, Any], key: str) -> int | None:
    return None if body.get(key) is None else integer(body, key)


def number(body: dict[str, Any], key: str) -> float:
    value = body.get(key)
    if type(value) is int or type(value) is float:
        return float(value)
    raise Garbled(f"{key} is not a number")


def boolean(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if not isinstance(value, bool):
        raise Garbled(f"{key} is not true or false")
    return value


def timestamp(body: dict[str, Any], key: str) -> datetime:
    try:
        when = datetime.fromisoformat(text(body, key))
    except ValueError as exc:
        raise Garbled(f"{key} is not a time") from exc
    if when.tzinfo is None:
        raise Garbled(f"{key} has no time zone")
    return when


def array(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if not isinstance(value, list):
        raise Garbled(f"{key} is not a list")
    return value


def _integers(values: object) -> list[int]:
    if not isinstance(values, list) or any(type(value) is not int for value in values):
        raise Garbled("param_types is not a list of integers")
    return values
