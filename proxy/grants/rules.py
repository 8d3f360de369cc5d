"""Pure checks of a request against the current policy: who may do what, what is due, what fits.

The lifecycle (`lifecycle.py`) decides *whether an action is possible from a state* with its
transition table; these functions decide *whether this actor may do it under this policy*, and
what the policy makes of a request (clamped duration, auto-approval, the approval count). They do
no I/O and read no clock, so tests table them directly. Names match exactly (SECURITY.md row 21).

Eligibility is always evaluated against the policy passed in — the current one. In particular,
`count_approvals` recounts every recorded approval under the current rule, so an approver who
was removed from the approver groups before the quorum was reached no longer counts (fail closed).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from datetime import datetime, timedelta

from proxy.errors import PgwardenError, Severity
from proxy.grants.requests import AccessRequest, Action, Approval, RequestState
from proxy.policy.models import (
    AccessLevelName,
    ApprovalRule,
    AutoApproval,
    Policy,
    Target,
    UserName,
)

# Free text (reasons, comments) is stored, shown to approvers and written to audit lines: bound it.
MAX_TEXT_LENGTH = 2000
# Ends the message for an unknown target or level: where to see the names one may use.
LIST_HINT = " (pgwarden targets lists what you may request)"


class NotPermitted(PgwardenError):
    """The actor may not do this to this request."""

    sqlstate = "42501"  # insufficient_privilege
    severity = Severity.ERROR


class InvalidRequest(PgwardenError):
    """The request does not fit the current policy (unknown name, missing reason, bad duration)."""

    sqlstate = "22023"  # invalid_parameter_value
    severity = Severity.ERROR


def check_text(what: str, text: str) -> None:
    if len(text) > MAX_TEXT_LENGTH:
        raise InvalidRequest(f"the {what} is longer than {MAX_TEXT_LENGTH} characters")
    if "\x00" in text:  # PostgreSQL's text cannot hold it: refused alike whichever the store
        raise InvalidRequest(f"the {what} contains a NUL character")


def granted_duration(policy: Policy, draft: AccessRequest) -> timedelta:
    """The duration to grant for a new request: its requested duration clamped to the level's and
    the target's maximum. Raises NotPermitted / InvalidRequest if it does not fit the policy."""
    if draft.requester not in policy.users:
        raise NotPermitted(f"user {draft.requester!r} is not in the policy")
    target = policy.targets.get(draft.target)
    if target is None:
        names = [t.name for t in requestable(policy, draft.requester)]
        suggestion = did_you_mean(draft.target, names)
        raise InvalidRequest(f"unknown target {quoted(draft.target)}{suggestion}{LIST_HINT}")
    level = draft.access_level
    if level not in target.access_levels:
        suggestion = did_you_mean(level, target.access_levels)
        raise InvalidRequest(
            f"target {quoted(target.name)} has no access level {quoted(level)}{suggestion}"
            f"{LIST_HINT}"
        )
    if draft.requested_duration <= timedelta(0):
        raise InvalidRequest("the duration must be positive")
    check_text("reason", draft.reason)
    if target.approval_for(level).require_reason and not draft.reason.strip():
        raise InvalidRequest(f"a reason is required for {level!r} on {draft.target!r}")
    return min(draft.requested_duration, target.max_duration_for(level))


def requestable(policy: Policy, user: UserName) -> tuple[Target, ...]:
    """The targets `user` may request, by name, each with all its levels: every target for a user
    in the policy (approval rules decide who approves, not who asks), none for anyone else."""
    if user not in policy.users:
        return ()
    return tuple(policy.targets[name] for name in sorted(policy.targets))


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`; did you mean "shop"?` for the candidates closest to `name` (case aside), or ``."""
    by_folded = {c.casefold(): c for c in sorted(candidates)}
    close = difflib.get_close_matches(name.casefold(), list(by_folded), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(quoted(by_folded[c]) for c in close) + "?"


def quoted(name: str) -> str:
    """A name in double quotes, escaped as in JSON (names never hold control characters)."""
    return json.dumps(name, ensure_ascii=False)


def rule_or_none(policy: Policy, request: AccessRequest) -> ApprovalRule | None:
    """The approval rule of the request's level, or None if the level left the policy."""
    if policy.level(request.target, request.access_level) is None:
        return None
    return policy.targets[request.target].approval_for(request.access_level)


def require_rule(policy: Policy, request: AccessRequest) -> ApprovalRule:
    """The request's approval rule; InvalidRequest if its target or level left the policy."""
    rule = rule_or_none(policy, request)
    if rule is None:
        raise InvalidRequest(
            f"access level {request.access_level!r} on {request.target!r} is no longer "
            "in the policy"
        )
    return rule


def matching_auto_approval(policy: Policy, request: AccessRequest) -> AutoApproval | None:
    """The first auto-approval rule covering this requester, level and (granted) duration."""
    rule = rule_or_none(policy, request)
    for auto in () if rule is None else rule.auto_approve:
        if (
            _auto_applies(policy, auto, request.requester, request.access_level)
            and request.duration <= auto.max_duration
        ):
            return auto
    return None


def auto_approval_limit(
    policy: Policy, user: UserName, target: Target, level: AccessLevelName
) -> timedelta | None:
    """The longest request of `user` for `level` on `target` that an auto-approval rule makes
    active at once (never above the level's maximum); None if no rule applies to `user`."""
    rule = target.approval_for(level)
    limits = [a.max_duration for a in rule.auto_approve if _auto_applies(policy, a, user, level)]
    return min(max(limits), target.max_duration_for(level)) if limits else None


def _auto_applies(
    policy: Policy, auto: AutoApproval, user: UserName, level: AccessLevelName
) -> bool:
    """Whether `auto` covers `user` (by name or group) and `level`, whatever the duration."""
    in_rule = user in auto.users or bool(policy.groups_of(user) & auto.groups)
    return in_rule and level in auto.access_levels


def count_approvals(policy: Policy, request: AccessRequest, approvals: tuple[Approval, ...]) -> int:
    """Distinct approvers eligible under the current policy, never counting the requester."""
    rule = rule_or_none(policy, request)
    if rule is None:
        return 0
    eligible = {
        a.approver
        for a in approvals
        if a.approver != request.requester and policy.can_approve(a.approver, rule)
    }
    return len(eligible)


def check_approver(policy: Policy, request: AccessRequest, approver: UserName) -> ApprovalRule:
    """The rule under which `approver` may approve; NotPermitted for the requester (admins
    included: being an admin never lets anyone approve their own request) and the ineligible."""
    rule = require_rule(policy, request)
    if approver == request.requester:
        raise NotPermitted(f"{approver} cannot approve their own request {request.id}")
    if not policy.can_approve(approver, rule):
        raise NotPermitted(f"{approver} is not an approver for request {request.id}")
    return rule


def _eligible(policy: Policy, request: AccessRequest, actor: UserName) -> bool:
    rule = rule_or_none(policy, request)
    return rule is not None and policy.can_approve(actor, rule)


def may_deny(policy: Policy, request: AccessRequest, actor: UserName) -> bool:
    """An eligible approver or an admin, but not the requester (who cancels instead)."""
    return actor != request.requester and (
        _eligible(policy, request, actor) or policy.is_admin(actor)
    )


def may_cancel(policy: Policy, request: AccessRequest, actor: UserName) -> bool:
    """Only the requester withdraws a request."""
    return actor == request.requester


def may_revoke(policy: Policy, request: AccessRequest, actor: UserName) -> bool:
    """The requester (giving access back), an eligible approver, or an admin."""
    return actor == request.requester or _eligible(policy, request, actor) or policy.is_admin(actor)


def due_action(request: AccessRequest, policy: Policy, now: datetime) -> Action | None:
    """LAPSE for a pending request past the policy's pending timeout, EXPIRE for an active one
    at or past its window end, REVOKE for an active one the policy no longer allows (see
    `policy_problem`), else None."""
    pending = request.state is RequestState.PENDING
    if pending and now >= request.created_at + policy.pending_timeout:
        return Action.LAPSE
    if request.state is not RequestState.ACTIVE:
        return None
    if request.ends_at is not None and now >= request.ends_at:
        return Action.EXPIRE
    if policy_problem(policy, request) is not None:
        return Action.REVOKE
    return None


def policy_problem(policy: Policy, request: AccessRequest) -> str | None:
    """Why the current policy no longer allows `request`'s grant: its user, its target or its
    access level is gone. Such a grant is revoked for good: restoring the policy later must not
    bring an old credential back to life."""
    if request.requester not in policy.users:
        return f"user {request.requester!r} was removed from the policy"
    if request.target not in policy.targets:
        return f"target {request.target!r} was removed from the policy"
    if policy.level(request.target, request.access_level) is None:
        return (
            f"access level {request.access_level!r} of {request.target!r} was removed from "
            "the policy"
        )
    return None
