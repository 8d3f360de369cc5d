"""What the API (and the webhooks) show of requests, approvals, history and sessions, as JSON.

One shape per thing, used by every endpoint that returns it, so that a script reading `GET
/requests/{id}` and a webhook receiver see the same fields. Instants are ISO 8601 in UTC with a
`Z`; durations are written as in the policy (`2h`) with `*_seconds` beside them for scripts.
Nothing here ever includes a password, a verifier or a token; the targets' views never include
their upstream (host, database), roles or secret references either.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from proxy.grants.requests import AccessRequest, Approval, RequestState, Transition
from proxy.grants.rules import auto_approval_limit, count_approvals, requestable, rule_or_none
from proxy.policy.durations import format_duration
from proxy.policy.models import AccessLevelName, Policy, Target, UserName
from proxy.session.session import SessionInfo

JsonObject = dict[str, Any]


def timestamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _opt(at: datetime | None) -> str | None:
    return None if at is None else timestamp(at)


def request_view(request: AccessRequest, pending_timeout: timedelta | None = None) -> JsonObject:
    """A request; `lapses_at` is given for a pending one when the policy's timeout is known."""
    view: JsonObject = {
        "id": request.id,
        "requester": request.requester,
        "target": request.target,
        "access_level": request.access_level,
        "requested_duration": format_duration(request.requested_duration),
        "duration": format_duration(request.duration),
        "duration_seconds": int(request.duration.total_seconds()),
        "clamped": request.clamped,
        "reason": request.reason,
        "state": request.state.value,
        "created_at": timestamp(request.created_at),
        "activated_at": _opt(request.activated_at),
        "ends_at": _opt(request.ends_at),
        "closed_at": _opt(request.closed_at),
        "closed_by": request.closed_by,
        "close_reason": request.close_reason,
    }
    if request.state is RequestState.PENDING and pending_timeout is not None:
        view["lapses_at"] = timestamp(request.created_at + pending_timeout)
    return view


def request_detail(
    request: AccessRequest,
    policy: Policy,
    approvals: tuple[Approval, ...],
    history: tuple[Transition, ...],
) -> JsonObject:
    """A request with its approvals, its history and, while pending, what it still needs."""
    view = request_view(request, policy.pending_timeout)
    view["approvals"] = [
        {"approver": a.approver, "at": timestamp(a.at), "comment": a.comment} for a in approvals
    ]
    view["history"] = [
        {
            "action": t.action.value,
            "from_state": None if t.from_state is None else t.from_state.value,
            "to_state": t.to_state.value,
            "actor": t.actor,
            "at": timestamp(t.at),
            "why": t.why,
        }
        for t in history
    ]
    view["approval"] = approval_status(policy, request, approvals)
    return view


def approval_status(
    policy: Policy, request: AccessRequest, approvals: tuple[Approval, ...]
) -> JsonObject | None:
    """How many approvals a pending request has and needs, and who could still give them."""
    rule = rule_or_none(policy, request)
    if request.state is not RequestState.PENDING or rule is None:
        return None
    received = count_approvals(policy, request, approvals)
    already = {a.approver for a in approvals} | {request.requester}
    return {
        "required": rule.required_approvals,
        "received": received,
        "missing": max(0, rule.required_approvals - received),
        "approver_users": sorted(u for u in rule.approver_users if u not in already),
        "approver_groups": sorted(rule.approver_groups),
    }


def needs_text(status: JsonObject) -> str:
    """`1 more approval from: carol, dba (group)`: for messages to people."""
    who = [*status["approver_users"], *(f"{g} (group)" for g in status["approver_groups"])]
    missing = status["missing"]
    noun = "approval" if missing == 1 else "approvals"
    return f"{missing} more {noun} from: {', '.join(who) or 'nobody eligible'}"


def session_view(info: SessionInfo, replica: str | None = None) -> JsonObject:
    """A live session; with several replicas, `replica` names the one that holds it."""
    view: JsonObject = {
        "id": info.session_id,
        "user": info.user,
        "target": info.target,
        "access_level": info.access_level,
        "request_id": info.grant_id,
        "client_address": info.client_address,
        "client_tls": info.client_tls,
        "application_name": info.application_name,
        "started_at": timestamp(info.started_at),
        "ends_at": timestamp(info.grant_ends_at),
    }
    if replica is not None:
        view["replica"] = replica
    return view


def targets_view(policy: Policy, user: UserName) -> JsonObject:
    """What `user` may request: each target and level, its limit, its approvers, and the
    auto-approval that applies to `user` (never the rules of other people)."""
    return {"targets": [target_view(policy, user, t) for t in requestable(policy, user)]}


def target_view(policy: Policy, user: UserName, target: Target) -> JsonObject:
    return {
        "name": target.name,
        "description": target.description,
        "require_client_tls": target.require_client_tls,
        "access_levels": [
            _level_view(policy, user, target, level) for level in sorted(target.access_levels)
        ],
    }


def _level_view(
    policy: Policy, user: UserName, target: Target, level: AccessLevelName
) -> JsonObject:
    rule = target.approval_for(level)
    auto = auto_approval_limit(policy, user, target, level)
    return {
        "name": level,
        **_span("max_duration", target.max_duration_for(level)),
        "approval": {
            "required": rule.required_approvals,
            "approver_groups": sorted(rule.approver_groups),
            "approver_users": sorted(rule.approver_users),
            "require_reason": rule.require_reason,
        },
        "auto_approval": None if auto is None else _span("max_duration", auto),
    }


def _span(name: str, span: timedelta) -> JsonObject:
    return {name: format_duration(span), f"{name}_seconds": int(span.total_seconds())}
