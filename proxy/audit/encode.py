"""An event's record members in one pass: redact, convert and JSON-encode each field at once.

The reference definition of a record's members is `dump_fields(redactor.redact_record(
event.to_record()))`: convert every field (`events.to_json`), pass every string through the
redactor, encode as ASCII JSON. That walks each record three times and builds two dicts; the sink
writes a record for every query, so `event_members` does the same in one walk, with the field
names of each event class worked out once. The records written for every query (a Query, an
Execute, an outcome, ...) have their own short encoders below, which skip even the per-field
dispatch. Tests hold all of them to the reference's bytes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from json.encoder import encode_basestring_ascii
from typing import Any

from proxy.audit.events import AuditEvent
from proxy.audit.query_events import (
    BindPortal,
    ExecutePortal,
    ParseStatement,
    QueryOutcome,
    SimpleQuery,
)
from proxy.audit.records import ENVELOPE, format_ts

Redact = Callable[[str], str]

_quote: Callable[[str], str] = encode_basestring_ascii  # the C encoder json.dumps itself uses
_PREFIXES: dict[type[AuditEvent], tuple[tuple[str, str], ...]] = {}
_NUMBERS = (float, timedelta)
_SEQUENCES = (tuple, list)


def event_members(event: AuditEvent, redact: Redact) -> str:
    """`"a":1,"b":"x"`: the event's fields as they appear in its line (no braces)."""
    if (encoder := _PER_QUERY.get(type(event))) is not None:
        return encoder(event, redact)
    prefixes = _PREFIXES.get(type(event)) or _prefixes(type(event))
    return ",".join([prefix + encode_value(getattr(event, name), redact)
                     for name, prefix in prefixes])  # fmt: skip


def _prefixes(cls: type[AuditEvent]) -> tuple[tuple[str, str], ...]:
    names = tuple(field.name for field in dataclasses.fields(cls))
    if ENVELOPE.intersection(names):
        raise ValueError(f"{cls.__name__} uses a reserved field name")
    prefixes = tuple((name, _quote(name) + ":") for name in names)
    _PREFIXES[cls] = prefixes
    return prefixes


def encode_value(value: object, redact: Redact) -> str:
    """One field's JSON text, exactly as `to_json`, redaction and `json.dumps` would make it."""
    if isinstance(value, str):  # StrEnum members too: they are recorded as their value
        return _quote(redact(value))
    if value is None or value is True or value is False:
        return "null" if value is None else "true" if value else "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, _NUMBERS):
        number = value.total_seconds() if isinstance(value, timedelta) else value
        if not math.isfinite(number):
            raise ValueError("the audit log cannot record NaN or infinity")
        return float.__repr__(number)
    if isinstance(value, datetime):
        return _quote(redact(format_ts(value)))
    return _encode_compound(value, redact)


def _encode_compound(value: object, redact: Redact) -> str:
    if isinstance(value, _SEQUENCES):
        return "[" + ",".join([encode_value(item, redact) for item in value]) + "]"
    if isinstance(value, Mapping):
        items = [_quote(str(k)) + ":" + encode_value(v, redact) for k, v in value.items()]
        return "{" + ",".join(items) + "}"
    shaped = getattr(value, "to_json", None)  # a value that says how it is recorded (Param)
    if callable(shaped):
        return encode_value(shaped(), redact)
    raise TypeError(f"cannot record a {type(value).__name__} in the audit log")


# -- the records of every query ----------------------------------------------------------------


def _optional(text: str | None, redact: Redact) -> str:
    return "null" if text is None else _quote(redact(text))


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _simple(e: SimpleQuery, r: Redact) -> str:
    return (
        f'"session_id":{_quote(r(e.session_id))},"n":{e.n:d},"text":{_quote(r(e.text))},'
        f'"text_bytes":{e.text_bytes:d},"truncated":{_flag(e.truncated)}'
    )


def _parse(e: ParseStatement, r: Redact) -> str:
    return (
        f'"session_id":{_quote(r(e.session_id))},"n":{e.n:d},'
        f'"statement":{_quote(r(e.statement))},"text":{_quote(r(e.text))},'
        f'"text_bytes":{e.text_bytes:d},"truncated":{_flag(e.truncated)},'
        f'"param_types":{encode_value(e.param_types, r)}'
    )


def _bind(e: BindPortal, r: Redact) -> str:
    return (
        f'"session_id":{_quote(r(e.session_id))},"n":{e.n:d},"portal":{_quote(r(e.portal))},'
        f'"statement":{_quote(r(e.statement))},"params":{encode_value(e.params, r)},'
        f'"params_omitted":{e.params_omitted:d},"redacted":{_flag(e.redacted)}'
    )


def _execute(e: ExecutePortal, r: Redact) -> str:
    return (
        f'"session_id":{_quote(r(e.session_id))},"n":{e.n:d},"portal":{_quote(r(e.portal))},'
        f'"max_rows":{e.max_rows:d}'
    )


def _outcome(e: QueryOutcome, r: Redact) -> str:
    tags = ",".join([_quote(r(tag)) for tag in e.tags])
    rows = "null" if e.rows is None else f"{e.rows:d}"
    return (
        f'"session_id":{_quote(r(e.session_id))},"n":{e.n:d},"status":{_quote(r(e.status))},'
        f'"tags":[{tags}],"rows":{rows},"sqlstate":{_optional(e.sqlstate, r)},'
        f'"error":{_optional(e.error, r)},"duration":{float.__repr__(e.duration.total_seconds())}'
    )


_PER_QUERY: dict[type[AuditEvent], Callable[[Any, Redact], str]] = {
    SimpleQuery: _simple,
    ParseStatement: _parse,
    BindPortal: _bind,
    ExecutePortal: _execute,
    QueryOutcome: _outcome,
}
