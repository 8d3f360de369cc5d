"""`encode.event_members`, the one-pass record encoder, against its reference definition.

The reference is `dump_fields(redactor.redact_record(event.to_record()))`. For every event class,
instances full of awkward values — control characters, U+2028, lone surrogates, quotes and
backslashes, non-ASCII, secrets of every kind, None, huge ints, timedeltas with microseconds,
aware datetimes in and out of UTC, enums, Params — must encode to the reference's exact text,
with every secret masked in every field. Field names that would clash with the envelope, NaN or
infinity, and values the log cannot hold are refused as the reference refuses them.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import proxy.audit.events
import proxy.audit.query_events
from proxy.audit.encode import encode_value, event_members
from proxy.audit.events import AuditEvent
from proxy.audit.records import ENVELOPE, dump_fields
from proxy.audit.redact import Redactor
from proxy.session.session import EndReason
from tests.fixtures.examples import examples

KNOWN_SECRET = "pgw-Tmp-7Hq2xLz9Rw4K"  # one of pgwarden's own temporary passwords
SECRETS = (KNOWN_SECRET,)
REDACTOR = Redactor(lambda: SECRETS)

AWKWARD = [
    "",
    "é漢字🙂 Ünïcödé",
    "nul\x00 bell\x07 esc\x1b[31m del\x7f",
    "line\u2028separator\u2029paragraph\x85",
    "undecodable \udc80\udcff",
    "lone \ud800 high",
    'quote" back\\slash \\" \\\\',
    "admin\u202egnp.exe",
    "ALTER ROLE x PASSWORD 'hunter2hunter2'",
    "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy",
    "postgres://u:pw@h/db",
    "md5" + "0123456789abcdef" * 2,
    "host=db password=s3cret dbname=x",
    '{"user": "a", "password": "s3cret"}',
    KNOWN_SECRET,
    f"SELECT '{KNOWN_SECRET}' -- pasted",
    "x" * 200 + KNOWN_SECRET,  # longer than the redactor's memo holds
]


def every_event_class() -> list[type[AuditEvent]]:
    """Every AuditEvent subclass the two event modules define."""
    found: list[type[AuditEvent]] = []
    for module in (proxy.audit.events, proxy.audit.query_events):
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, AuditEvent)
                and value is not AuditEvent
                and value.__module__ == module.__name__
            ):
                found.append(value)
    return found


EVENTS = every_event_class()

TEXT: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(AWKWARD),
    st.text(),
    st.lists(st.sampled_from(AWKWARD) | st.text(max_size=4), max_size=4).map("".join),
    st.sampled_from(list(EndReason)),  # str fields get StrEnum values (SessionEnded.reason)
)
INTS = st.integers() | st.sampled_from([0, -1, 2**63, -(2**63) - 1, 10**40])
ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
BASE: dict[object, st.SearchStrategy[Any]] = {
    str: TEXT,
    int: INTS,
    bool: st.booleans(),
    timedelta: st.timedeltas()
    | st.sampled_from([timedelta(microseconds=1), -timedelta(seconds=1.5)]),
    datetime: st.datetimes(
        min_value=datetime(1900, 1, 2), max_value=datetime(2200, 1, 1), timezones=ZONES
    ),
}


def strategy_for(hint: object) -> st.SearchStrategy[Any]:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return st.one_of(*[strategy_for(arg) for arg in args])
    if hint is type(None):
        return st.none()
    if origin is tuple:
        return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return st.sampled_from(list(hint))
    return BASE[hint]


def instances(cls: type[AuditEvent]) -> st.SearchStrategy[AuditEvent]:
    hints = get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


INSTANCES = {cls: instances(cls) for cls in EVENTS}  # built once, not for every example


def reference(event: AuditEvent, redactor: Redactor = REDACTOR) -> str:
    return dump_fields(redactor.redact_record(event.to_record()))


def test_every_event_class_is_found() -> None:
    assert len(EVENTS) == 29


@pytest.mark.parametrize("cls", EVENTS, ids=lambda cls: cls.kind)
@settings(max_examples=examples(150), deadline=None)
@given(data=st.data())
def test_members_match_the_reference_for_any_values(
    cls: type[AuditEvent], data: st.DataObject
) -> None:
    event = data.draw(INSTANCES[cls])
    members = event_members(event, REDACTOR.redact)
    assert members == reference(event)
    assert KNOWN_SECRET not in members
    assert members.isascii()


# -- every field of every encoder is redacted --------------------------------------------------


SCALARS: dict[object, object] = {
    int: 7,
    bool: True,
    timedelta: timedelta(seconds=1, microseconds=5),
    datetime: datetime(2026, 1, 5, 9, tzinfo=UTC),
}


def filled(cls: type[AuditEvent], text: str) -> AuditEvent:
    """An instance with `text` in every field that can hold a string (lists too)."""
    hints = get_type_hints(cls)
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        inner = [arg for arg in get_args(hint) if arg is not type(None)]
        if hint is str or (str in inner and get_origin(hint) is not tuple):
            values[f.name] = text
        elif get_origin(hint) is tuple and inner[0] is str:
            values[f.name] = (text, "ok", text)
        elif get_origin(hint) is tuple:
            values[f.name] = (1, 2**40)
        elif isinstance(hint, type) and issubclass(hint, Enum):
            values[f.name] = next(iter(hint))
        else:
            values[f.name] = SCALARS.get(hint)  # None for Optional ints
    return cls(**values)


SECRET_TEXTS = [
    (f"id-{KNOWN_SECRET}", KNOWN_SECRET),
    ("ALTER ROLE x PASSWORD 'hunter2hunter2'", "hunter2hunter2"),
    ("postgres://u:pw-Zx81@h/db", "pw-Zx81"),
    ("SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy", "c3RvcmVk"),
]


@pytest.mark.parametrize("cls", EVENTS, ids=lambda cls: cls.kind)
@pytest.mark.parametrize(("text", "secret"), SECRET_TEXTS, ids=["known", "sql", "uri", "scram"])
def test_a_secret_in_any_field_is_masked(cls: type[AuditEvent], text: str, secret: str) -> None:
    event = filled(cls, text)
    members = event_members(event, REDACTOR.redact)
    assert members == reference(event)
    assert secret not in members


def test_values_encode_exactly_as_json_would() -> None:
    redact = REDACTOR.redact
    assert encode_value(10**40, redact) == "10000000000000000000000000000000000000000"
    assert encode_value(True, redact) == "true"
    assert encode_value(None, redact) == "null"
    assert encode_value(timedelta(days=1, microseconds=7), redact) == "86400.000007"
    ist = timezone(timedelta(hours=5, minutes=30))
    assert encode_value(datetime(2026, 1, 5, 14, 30, tzinfo=ist), redact) == (
        '"2026-01-05T09:00:00.000000Z"'
    )
    assert encode_value('\u2028\udc80"\\', redact) == '"\\u2028\\udc80\\"\\\\"'
    assert encode_value((None, {"text": "ab", "bytes": 9}), redact) == (
        '[null,{"text":"ab","bytes":9}]'
    )


# -- what cannot be recorded --------------------------------------------------------------------


def one_field_event(name: str, hint: object) -> Callable[[Any], AuditEvent]:
    """A throwaway event class (local: the module-level event census never sees it)."""
    cls: Any = dataclasses.make_dataclass(
        "Throwaway", [(name, hint)], bases=(AuditEvent,), namespace={"kind": "test.throwaway"},
        frozen=True, slots=True,
    )  # fmt: skip
    assert issubclass(cls, AuditEvent)
    factory: Callable[[Any], AuditEvent] = cls
    return factory


@pytest.mark.parametrize("name", sorted(ENVELOPE))
def test_a_field_named_like_an_envelope_key_is_refused(name: str) -> None:
    event = one_field_event(name, int)(1)
    with pytest.raises(ValueError, match="reserved"):
        event_members(event, REDACTOR.redact)
    with pytest.raises(ValueError, match="reserved"):  # refused every time, not cached as fine
        event_members(event, REDACTOR.redact)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(number: float) -> None:
    cls = one_field_event("ratio", float)
    with pytest.raises(ValueError, match="NaN or infinity"):
        event_members(cls(number), REDACTOR.redact)
    with pytest.raises(ValueError, match="NaN or infinity"):
        encode_value(("x", [number]), REDACTOR.redact)
    with pytest.raises(ValueError, match="JSON compliant"):  # as the reference refuses it
        reference(cls(number))
    assert event_members(cls(0.1), REDACTOR.redact) == reference(cls(0.1)) == '"ratio":0.1'


@pytest.mark.parametrize("value", [b"bytes", {1, 2}, object(), 1j])
def test_values_of_unsupported_types_are_refused(value: object) -> None:
    cls = one_field_event("blob", object)
    with pytest.raises(TypeError, match="cannot record"):
        event_members(cls(value), REDACTOR.redact)
    with pytest.raises(TypeError):
        reference(cls(value))
