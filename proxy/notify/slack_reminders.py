"""Reminders before a grant ends: a DM to the requester at each `sessions.warn_before` offset.

The leader looks for due reminders on each sweep (`remind`, from `proxy/runtime/duties.py`) and
writes each as an outbox row for the `slack:dm` destination; the deliverer sends it like any
other. A reminder's event id is made of its request and offset, and the outbox keeps one row per
(event id, destination): writing it again — a second sweep, or a new leader after a failover — is
a no-op, so each is sent once. Rows live a week after delivery (`deliverer.RETENTION`), far longer
than the window in which a reminder is due.

Due means the offset's moment has come and the grant has not ended. Only the latest offset passed
is due: a leader that was away during the 5-minute mark and is back within the last minute sends
the 1-minute reminder, not both. An offset no shorter than the grant itself gets no reminder (a
2-minute grant is not told at its approval that it ends in 5 minutes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from proxy.api.views import request_view, timestamp
from proxy.grants.requests import AccessRequest, RequestState
from proxy.grants.store import StoreTx
from proxy.grants.store_sql import RequestQuery
from proxy.notify.events import slack_escape
from proxy.policy.durations import format_duration
from proxy.policy.models import Policy

REMINDER: Final = "grant_ending"  # the outbox row's kind
DM: Final = "slack:dm"  # the requester's DMs (slack_sender.py sends them)
MAX_ACTIVE: Final = 1000  # active grants looked at per sweep: people's grants, not queries


def due_reminders(
    tx: StoreTx, now: datetime, offsets: Sequence[timedelta]
) -> list[tuple[str, AccessRequest, timedelta]]:
    """(event id, request, offset) of every reminder due at `now` (read only)."""
    active = tx.list_requests(
        RequestQuery(state=RequestState.ACTIVE, everything=True, limit=MAX_ACTIVE)
    )
    due = []
    for request in active:
        offset = due_offset(request, now, offsets)
        if offset is not None:
            due.append((f"{request.id}:ends-in:{int(offset.total_seconds())}s", request, offset))
    return due


def remind(
    tx: StoreTx,
    now: datetime,
    offsets: Sequence[timedelta],
    policy: Policy,
    skip: frozenset[str] = frozenset(),
) -> list[str]:
    """Write the reminders due at `now`, but those in `skip`, in the write transaction `tx`; their
    event ids (a row written before, by another leader, stays as it was: ids are unique)."""
    if policy.notifications.slack is None or not offsets:
        return []
    written = []
    for event_id, request, offset in due_reminders(tx, now, offsets):
        if event_id not in skip:
            tx.add_notification(
                event_id, DM, REMINDER, _document(event_id, request, offset, now), now
            )
            written.append(event_id)
    return written


def due_offset(
    request: AccessRequest, now: datetime, offsets: Sequence[timedelta]
) -> timedelta | None:
    """The latest of `offsets` whose moment before `request`'s end has come, or None."""
    if request.ends_at is None or now >= request.ends_at:
        return None
    passed = [o for o in offsets if o < request.duration and request.ends_at - o <= now]
    return min(passed, default=None)


def reminder_text(request: dict[str, Any], ends_in: float) -> str:
    """The requester's DM: which grant, how long it has left, what to do about it."""
    left = format_duration(timedelta(seconds=ends_in))
    return slack_escape(
        f"Your access to {request['target']} ({request['access_level']}, request "
        f"{request['id']}) ends in {left}, at {request['ends_at']}. Sessions are ended then; "
        f"ask again with pgwarden request {request['target']} if you need more time."
    )


def _document(event_id: str, request: AccessRequest, offset: timedelta, now: datetime) -> str:
    body = {
        "id": event_id, "event": REMINDER, "at": timestamp(now), "actor": "pgwarden",
        "message": f"{request.requester}'s grant {request.id} ends in {format_duration(offset)}",
        "request": request_view(request), "ends_in": offset.total_seconds(),
    }  # fmt: skip
    return json.dumps(body, ensure_ascii=False)
