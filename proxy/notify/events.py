"""Events for webhooks: what happened, as a human message and a JSON document, and how the
lifecycle's transitions become events.

An `Event` carries a stable `id` (a UUID made when it is written to the outbox): the generic body
has it as `"id"` and every POST sends it as the `Idempotency-Key` header, so that a receiver can
drop the rare duplicate (a leader that dies after a POST succeeded and before it marked the row).

Bodies: `generic` is pgwarden's JSON document `{"id", "event", "at", "actor", "message",
"request" | "session"}` (the request in the same shape as the HTTP API's); `slack` is an
incoming-webhook body `{"text": message}`, with `&`, `<` and `>` escaped so that a reason cannot
mention `<!channel>`. No body ever carries a password or a token. The outbox stores the generic
document; every other format is rendered from it (`render`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from proxy.api.views import request_view, session_view, timestamp
from proxy.grants.requests import AccessRequest, Action, RequestState, Transition
from proxy.grants.rules import count_approvals, rule_or_none
from proxy.grants.store import StoreTx
from proxy.policy.durations import format_duration
from proxy.policy.models import EventKind, Policy, WebhookFormat
from proxy.session.session import SessionInfo


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened, ready to send: a human `message` and a JSON `subject`."""

    kind: EventKind
    at: datetime
    actor: str
    message: str
    subject: dict[str, Any] = field(default_factory=dict)  # {"request": ...} or {"session": ...}
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def document(self) -> str:
        """The generic JSON document, as the outbox stores it."""
        body = {
            "id": self.id, "event": self.kind.value, "at": timestamp(self.at),
            "actor": self.actor, "message": self.message, **self.subject,
        }  # fmt: skip
        return json.dumps(body, ensure_ascii=False)


def render(document: str, form: WebhookFormat) -> bytes:
    """The body of a POST in `form`, from a stored generic document."""
    if form is WebhookFormat.SLACK:
        text = str(json.loads(document)["message"])
        return json.dumps({"text": slack_escape(text)}, ensure_ascii=False).encode("utf-8")
    return document.encode("utf-8")


def slack_escape(text: str) -> str:
    """Slack's three control characters in message text (its mrkdwn is otherwise left alone)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- from the lifecycle -------------------------------------------------------------------------


def transition_events(tx: StoreTx, transitions: list[Transition], policy: Policy) -> list[Event]:
    """The events a write transaction's transitions announce, the request as it is at the end
    of the transaction (an approval that activates it says so). Activation and credentials have
    none of their own (the creation or the approval says it); a cancel has none at all."""
    events: list[Event] = []
    for t in transitions:
        request = tx.get_request(t.request_id)
        if request is None:  # the transaction has just written it
            continue
        if t.action is Action.APPROVE:
            events.append(_approved(tx, request, t, policy))
        elif (build := _BUILDERS.get(t.action)) is not None:
            events.append(build(request, t))
    return events


def request_created(request: AccessRequest, t: Transition) -> Event:
    what = _what(request)
    if request.state is RequestState.ACTIVE:
        text = f'{request.requester} got {what} (auto-approved): "{request.reason}"'
    else:
        text = (
            f'{request.requester} asks for {what}: "{request.reason}" '
            f"(request {request.id}; approve with: pgwarden approve {request.id})"
        )
    return _event(EventKind.REQUEST_CREATED, t, request.requester, text, request)


def _approved(tx: StoreTx, request: AccessRequest, t: Transition, policy: Policy) -> Event:
    approvals = tx.approvals(request.id)
    comment = next((a.comment for a in approvals if a.approver == t.actor), "")
    text = f"{t.actor} approved {request.requester}'s request {request.id} for {_what(request)}"
    if request.state is RequestState.ACTIVE and request.ends_at is not None:
        text += f"; active until {request.ends_at:%H:%M:%S} UTC"
    elif (rule := rule_or_none(policy, request)) is not None:
        received = count_approvals(policy, request, approvals)
        text += f" ({received} of {rule.required_approvals} approvals)"
    text += _quoted(comment)
    return _event(EventKind.REQUEST_APPROVED, t, t.actor, text, request)


def request_denied(request: AccessRequest, t: Transition) -> Event:
    text = f"{t.actor} denied {request.requester}'s request {request.id} for {_what(request)}"
    return _event(EventKind.REQUEST_DENIED, t, t.actor, text + _reason(t), request)


def request_revoked(request: AccessRequest, t: Transition) -> Event:
    text = f"{t.actor} revoked {request.requester}'s {_what(request)} (request {request.id})"
    return _event(EventKind.REQUEST_REVOKED, t, t.actor, text + _reason(t), request)


def request_lapsed(request: AccessRequest, t: Transition) -> Event:
    text = f"{request.requester}'s request {request.id} for {_what(request)} lapsed: {t.why}"
    return _event(EventKind.REQUEST_LAPSED, t, t.actor, text, request)


def grant_expired(request: AccessRequest, t: Transition) -> Event:
    at = request.closed_at or request.ends_at
    when = f" at {at:%H:%M:%S} UTC" if at is not None else ""
    text = f"{request.requester}'s {_what(request)} expired{when} (request {request.id})"
    return _event(EventKind.GRANT_EXPIRED, t, t.actor, text, request)


_BUILDERS = {
    Action.CREATE: request_created,
    Action.DENY: request_denied,
    Action.REVOKE: request_revoked,
    Action.LAPSE: request_lapsed,
    Action.EXPIRE: grant_expired,
}


def session_killed(info: SessionInfo, actor: str, reason: str, at: datetime) -> Event:
    text = (
        f"{actor} ended {info.user}'s session {info.session_id} on {info.target} "
        f"({info.access_level})" + _quoted(reason)
    )
    subject = {"session": session_view(info), "reason": reason}
    return Event(EventKind.SESSION_KILLED, at, actor, text, subject)


def _event(kind: EventKind, t: Transition, actor: str, text: str, request: AccessRequest) -> Event:
    return Event(kind, t.at, actor, text, {"request": request_view(request)})


def _reason(t: Transition) -> str:
    """The actor's reason; none when the lifecycle filled in its own ("deny by carol")."""
    return "" if t.why == f"{t.action} by {t.actor}" else _quoted(t.why)


def _what(request: AccessRequest) -> str:
    return f"{request.access_level} on {request.target} for {format_duration(request.duration)}"


def _quoted(text: str) -> str:
    return f': "{text}"' if text else ""
