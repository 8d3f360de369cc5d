"""Audit events are typed values with stable kinds and JSON-safe records."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import UTC, datetime, timedelta

import pytest

import proxy.audit.query_events  # noqa: F401 - registers the query events as subclasses
from proxy.audit.events import AuditEvent, GrantActivated, SessionEnded, SessionStarted
from proxy.audit.records import ENVELOPE
from proxy.session.session import EndReason, SessionInfo

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def every_event() -> list[type[AuditEvent]]:
    found, todo = [], list(AuditEvent.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        # slots=True replaces each class; only the one its module exports is the event.
        if getattr(sys.modules[cls.__module__], cls.__name__, None) is cls and cls not in found:
            found.append(cls)
    return found


def test_every_event_has_its_own_kind() -> None:
    kinds = [cls.kind for cls in every_event()]
    assert all(kinds)
    assert len(kinds) == len(set(kinds))
    assert len(kinds) == 29  # the query records but `query.copy` are not events (query_events.py)


@pytest.mark.parametrize("cls", every_event(), ids=lambda cls: cls.kind)
def test_events_are_frozen_and_never_use_envelope_names(cls: type[AuditEvent]) -> None:
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert {f.name for f in dataclasses.fields(cls)} & ENVELOPE == set()


def test_a_session_start_carries_what_login_fixed() -> None:
    info = SessionInfo(
        session_id="s1", user="alice", target="orders", access_level="read-only", grant_id="g1",
        upstream_role="ro", client_address="127.0.0.1:5555", client_tls=True,
        application_name="psql", started_at=NOW, grant_ends_at=NOW + timedelta(hours=1),
        backend_process_id=4242,
    )  # fmt: skip
    record = SessionStarted.of(info).to_record()
    assert record == {
        "session_id": "s1", "grant_id": "g1", "user": "alice", "target": "orders",
        "access_level": "read-only", "upstream_role": "ro", "client_address": "127.0.0.1:5555",
        "client_tls": True, "application_name": "psql",
        "started_at": "2026-01-05T09:00:00.000000Z",
        "grant_ends_at": "2026-01-05T10:00:00.000000Z", "backend_process_id": 4242,
    }  # fmt: skip


def test_records_are_json_values() -> None:
    ended = SessionEnded(
        "s1", EndReason.EXPIRED, "grant g1 ended", timedelta(seconds=90.5), 10, 20, 3
    )
    assert json.loads(json.dumps(ended.to_record()))["reason"] == "expired"
    assert ended.to_record()["duration"] == 90.5
    activated = GrantActivated("g1", "alice", "orders", "ro", NOW, NOW, "bob")
    assert activated.to_record()["ends_at"] == "2026-01-05T09:00:00.000000Z"
