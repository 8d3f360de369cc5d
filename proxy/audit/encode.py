"""An event's record members in one pass: redact, convert and JSON-encode each field at once.

The reference definition of a record's members is `dump_fields(redactor.redact_record(
event.to_record()))`: convert every field (`events.to_json`), pass every string through the
redactor, encode as ASCII JSON. That walks each record three times and builds two dicts;
`event_members` does the same in one walk, with the field names of each event class worked out
once, and tests hold it to the reference's bytes.

The records written for every query are not events: the recorder builds their members as JSON
text directly (`EncodedRecord`, `query_events.py`), every string redacted as it goes in
(`shaping.py`), so the sink writes them as they are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from json.encoder import encode_basestring_ascii
from typing import NamedTuple

from proxy.audit.events import AuditEvent
from proxy.audit.records import ENVELOPE, format_ts

Redact = Callable[[str], str]

_quote: Callable[[str], str] = encode_basestring_ascii  # the C encoder json.dumps itself uses
_PREFIXES: dict[type[AuditEvent], tuple[tuple[str, str], ...]] = {}
_NUMBERS = (float, timedelta)
_SEQUENCES = (tuple, list)


class EncodedRecord(NamedTuple):
    """A record made as JSON text: its kind and its members (`"a":1,"b":"x"`, no braces), every
    string in them already redacted and ASCII-escaped. The sink writes them as they are."""

    kind: str
    members: str


def event_members(event: AuditEvent, redact: Redact) -> str:
    """`"a":1,"b":"x"`: the event's fields as they appear in its line (no braces)."""
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
    shaped = getattr(value, "to_json", None)  # a value that says how it is recorded
    if callable(shaped):
        return encode_value(shaped(), redact)
    raise TypeError(f"cannot record a {type(value).__name__} in the audit log")
