"""The approver's side: the inbox, a request's page, and approve / deny / revoke / withdraw.

The inbox lists the pending requests the person may approve now (never their own, never one
they approved already), oldest first, with how long each has waited and its approvals so far.
A request's page shows everything needed to decide on one screen. Actions go through the same
`GrantService` calls and the same visibility rules as the API (`api.access`): a request one may
not see is answered as one that does not exist, and the lifecycle refuses what the person may not
do (self-approval by URL included) or what the request's state no longer allows (approving a
request that was withdrawn meanwhile), each with its reason on the page.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from proxy.api.access import may_approve_scope, may_see_request, visible_requests
from proxy.api.errors import ApiError, not_found
from proxy.api.requests_routes import REQUEST_ID
from proxy.api.views import approval_status, request_detail
from proxy.grants.requests import AccessRequest, Approval, RequestId, RequestState
from proxy.grants.rules import may_cancel, may_deny, may_revoke, rule_or_none
from proxy.grants.store import MAX_LIST_LIMIT, RequestQuery
from proxy.policy.models import Policy, UserName
from proxy.web.deps import DEPS
from proxy.web.page import View, page, redirect
from proxy.web.transcripts import grant_sessions

RECENT_GRANTS: Final = 5  # the requester's earlier grants on the same target shown beside a request


def routes() -> list[web.RouteDef]:
    return [
        web.get("/console/", page(inbox), name="console:inbox"),
        web.get("/console/requests/{id}", page(show), name="console:request"),
        web.post("/console/requests/{id}/approve", page(approve), name="console:approve"),
        web.post("/console/requests/{id}/deny", page(deny), name="console:deny"),
        web.post("/console/requests/{id}/revoke", page(revoke), name="console:revoke"),
        web.post("/console/requests/{id}/cancel", page(cancel), name="console:cancel"),
    ]


async def inbox(view: View) -> web.StreamResponse:
    def work() -> list[dict[str, Any]]:
        policy, user, now = view.policy, view.user, view.ctx.clock.now()
        query = visible_requests(policy, user, RequestQuery(RequestState.PENDING,
                                                            limit=MAX_LIST_LIMIT))  # fmt: skip
        waiting = []
        for found in view.ctx.grants.list_requests(query):
            approvals = view.ctx.grants.approvals(found.id)
            if may_approve_now(policy, found, approvals, user):
                status = approval_status(policy, found, approvals) or {}
                waiting.append({"request": found, "waited": now - found.created_at, **status})
        return sorted(waiting, key=lambda item: item["request"].created_at)

    return view.render("inbox.html", waiting=await view.ctx.blocking(work))


def may_approve_now(
    policy: Policy, request: AccessRequest, approvals: tuple[Approval, ...], user: UserName
) -> bool:
    """Whether approving is something `user` can do to `request` now."""
    return (
        request.state is RequestState.PENDING
        and request.requester != user
        and may_approve_scope(policy, user, request.target, request.access_level)
        and all(a.approver != user for a in approvals)
    )


def request_id(view: View) -> RequestId:
    text = view.request.match_info["id"]
    if REQUEST_ID.fullmatch(text) is None:
        raise not_found(f"request {text[:64]!r}")
    return RequestId(text)


def visible(view: View, rid: RequestId) -> AccessRequest:
    found = view.ctx.grants.get(rid)  # RequestNotFound: 404
    if not may_see_request(view.policy, found, view.user):
        raise not_found(f"request {rid}")
    return found


async def show(view: View) -> web.StreamResponse:
    rid = request_id(view)
    files = view.request.app[DEPS].audit_files

    def work() -> dict[str, Any]:
        policy, user = view.policy, view.user
        found = visible(view, rid)
        approvals = view.ctx.grants.approvals(rid)
        detail = request_detail(found, policy, approvals, view.ctx.grants.history(rid))
        return {
            "r": found, "detail": detail, "policy_facts": policy_facts(policy, found, user),
            "can": {
                "approve": may_approve_now(policy, found, approvals, user),
                "deny": found.state is RequestState.PENDING and may_deny(policy, found, user),
                "revoke": found.state is RequestState.ACTIVE and may_revoke(policy, found, user),
                "cancel": found.state is RequestState.PENDING and may_cancel(policy, found, user),
                "credential": found.state is RequestState.ACTIVE and found.requester == user,
                "again": found.state not in LIVE and found.requester == user,
            },
            "recent": recent_grants(view, found), "now": view.ctx.clock.now(),
            "sessions": grant_sessions(files(), rid, found.activated_at is not None),
        }  # fmt: skip

    return view.render("request.html", **await view.ctx.blocking(work))


LIVE: Final = frozenset({RequestState.PENDING, RequestState.ACTIVE})


def policy_facts(policy: Policy, request: AccessRequest, user: UserName) -> dict[str, Any]:
    """The rule that applies, the upstream role, the requester's groups, and why `user` may act."""
    target = policy.targets.get(request.target)
    level = None if target is None else target.access_levels.get(request.access_level)
    rule = rule_or_none(policy, request)
    why: list[str] = []
    if rule is not None and user != request.requester:
        if user in rule.approver_users:
            why.append("you are named as an approver")
        shared = sorted(policy.groups_of(user) & rule.approver_groups)
        if shared:
            why.append("you are in " + ", ".join(shared))
    if policy.is_admin(user):
        why.append("you are an admin (you may deny and revoke)")
    return {
        "role": None if level is None else level.role,
        "rule": rule,
        "requester_groups": sorted(policy.groups_of(request.requester)),
        "why_eligible": why,
    }


def recent_grants(view: View, request: AccessRequest) -> list[AccessRequest]:
    """The requester's latest earlier grants on this target (those that became active)."""
    query = RequestQuery(requester=request.requester, limit=MAX_LIST_LIMIT)
    earlier = [
        r for r in view.ctx.grants.list_requests(query)
        if r.target == request.target and r.id != request.id and r.activated_at is not None
    ]  # fmt: skip
    return earlier[:RECENT_GRANTS]


async def approve(view: View) -> web.StreamResponse:
    rid = request_id(view)
    comment = view.form.get("comment", "")

    def work() -> None:
        found = visible(view, rid)
        if found.requester == view.user:
            why = f"you cannot approve your own request {rid} (admins neither)"
            raise ApiError(403, "self_approval", why)
        view.ctx.grants.approve(rid, view.user, comment)

    await view.ctx.blocking(work)
    return redirect(f"/console/requests/{rid}?done=approved")


async def deny(view: View) -> web.StreamResponse:
    rid = request_id(view)
    reason = view.form.get("reason", "")
    if not reason.strip():
        raise ApiError(400, "invalid_body", "say why the request is denied (the requester sees it)")
    await view.ctx.blocking(_act, view, rid, lambda: view.ctx.grants.deny(rid, view.user, reason))
    return redirect(f"/console/requests/{rid}?done=denied")


async def revoke(view: View) -> web.StreamResponse:
    rid = request_id(view)
    reason = view.form.get("reason", "")
    await view.ctx.blocking(_act, view, rid, lambda: view.ctx.grants.revoke(rid, view.user, reason))
    return redirect(f"/console/requests/{rid}?done=revoked")


async def cancel(view: View) -> web.StreamResponse:
    rid = request_id(view)
    await view.ctx.blocking(_act, view, rid, lambda: view.ctx.grants.cancel(rid, view.user))
    return redirect(f"/console/requests/{rid}?done=cancelled")


def _act(view: View, rid: RequestId, action: Any) -> None:
    visible(view, rid)
    action()
