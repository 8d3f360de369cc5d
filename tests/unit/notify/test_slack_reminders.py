"""Reminders before a grant ends (which offset is due, what the DM says), the Slack message as
plain text (the demo's printout), and the `/readyz` note on notifications that do not get
through, read from a real SQLite store on a fake clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from proxy.grants.requests import AccessRequest, RequestId, RequestState
from proxy.grants.store import SqliteStore
from proxy.notify.slack_messages import plain_text, request_message
from proxy.notify.slack_reminders import due_offset, reminder_text
from proxy.policy.models import AccessLevelName, TargetName, UserName
from proxy.policy.policy_file import parse_policy
from proxy.runtime.duties import DeliveryNote
from tests.fixtures.clock import FakeClock

END = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OFFSETS = (timedelta(minutes=5), timedelta(minutes=1))
POLICY = """\
version: 1
users: {alice: {groups: [dev]}, carol: {groups: [dba]}}
targets:
  orders:
    upstream: {host: 127.0.0.1, port: 5432, database: orders}
    max_duration: 4h
    approval: {approvers: {groups: [dba]}}
    access_levels:
      ro: {role: r, password_env: X}
"""


def grant(duration: timedelta = timedelta(minutes=30)) -> AccessRequest:
    return AccessRequest(
        id=RequestId("r-1"), requester=UserName("alice"), target=TargetName("orders"),
        access_level=AccessLevelName("ro"), requested_duration=duration, duration=duration,
        reason="fix <!channel>", state=RequestState.ACTIVE, created_at=END - duration,
        activated_at=END - duration, ends_at=END,
    )  # fmt: skip


def test_the_latest_offset_passed_is_due_and_nothing_after_the_end() -> None:
    table = [  # (time left, due offset)
        (timedelta(minutes=10), None),
        (timedelta(minutes=5), timedelta(minutes=5)),
        (timedelta(minutes=2), timedelta(minutes=5)),
        (timedelta(minutes=1), timedelta(minutes=1)),  # a leader away at 5m sends only this
        (timedelta(seconds=1), timedelta(minutes=1)),
        (timedelta(0), None),
        (-timedelta(minutes=1), None),
    ]
    for left, due in table:
        assert due_offset(grant(), END - left, OFFSETS) == due, left


def test_an_offset_as_long_as_the_grant_gets_no_reminder() -> None:
    short = grant(timedelta(minutes=2))
    assert due_offset(short, END - timedelta(minutes=2), OFFSETS) is None
    assert due_offset(short, END - timedelta(seconds=30), OFFSETS) == timedelta(minutes=1)
    assert due_offset(replace(short, ends_at=None), END, OFFSETS) is None


def test_the_reminder_says_which_grant_when_and_what_to_do() -> None:
    view = {
        "id": "r-1",
        "target": "orders",
        "access_level": "ro",
        "ends_at": "2026-03-01T12:00:00Z",
    }
    text = reminder_text(view, 300.0)
    assert text.startswith("Your access to orders (ro, request r-1) ends in 5m, at 2026-03-01T")
    assert "pgwarden request orders" in text


def test_the_message_as_plain_text_has_its_facts_and_buttons() -> None:
    policy = parse_policy(POLICY, "policy.yaml")
    pending = replace(grant(), state=RequestState.PENDING, ends_at=None, activated_at=None)
    text = plain_text(request_message(pending, (), policy, "http://console/r-1")[1])
    assert text.splitlines()[0] == "*alice* asks for ro on orders for 30m"
    assert "&lt;!channel&gt;" in text  # escaped as in Slack
    assert "Target: orders" in text
    assert "Approvals: 0 of 1" in text
    assert text.splitlines()[-1] == "[Approve] [Deny]"


def test_a_delivery_note_when_rows_are_late_or_given_up(tmp_path: Path) -> None:
    clock = FakeClock(END)
    store = SqliteStore(tmp_path / "state.db")
    note = DeliveryNote(store, clock)
    try:
        assert note() is None
        with store.write() as tx:
            tx.add_notification("e-1", "slack:dm", "request_denied", "{}", clock.now())
        clock.advance(timedelta(minutes=4))
        assert note() is None  # retries take a while: not yet worth a note
        clock.advance(timedelta(minutes=2))
        assert note() == (
            "notifications (Slack, webhooks) are failing: the oldest unsent was written 6m ago; "
            "see the log and pgwarden_notification_failures_total"
        )
        with store.read() as tx:
            (row,) = tx.due_notifications(clock.now(), 10)
        with store.write() as tx:
            tx.notification_failed(row.id, 8, "ratelimited", clock.now(), gave_up=True)
        assert "failing: 1 given up in the last hour; see the log" in (note() or "")
        clock.advance(timedelta(hours=1, seconds=1))
        assert note() is None
    finally:
        store.close()
