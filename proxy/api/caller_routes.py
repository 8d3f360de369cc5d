"""`/api/v1/targets` and `/api/v1/status`: what the caller may request, and what they have now.

`targets` is computed from the policy in force (`rules.requestable`, the same rule that decides
whether a request is accepted), so it never lists a target the caller could not ask for; it shows
names, limits and approvers, never upstreams, roles or secrets (`views.targets_view`).

`status` lists the caller's own pending requests (with what each still needs) and active grants
(with the seconds left), whatever else the caller may see as an approver or admin; `now` is the
server's clock, so a client can show time left without trusting its own.
"""

from __future__ import annotations

from aiohttp import web

from proxy.api.context import CONTEXT, USER
from proxy.api.schemas import read_query
from proxy.api.views import JsonObject, approval_status, request_view, targets_view, timestamp
from proxy.grants.requests import RequestState
from proxy.grants.store import MAX_LIST_LIMIT, RequestQuery


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/targets", targets),
        web.get("/api/v1/status", status),
    ]


async def targets(request: web.Request) -> web.Response:
    read_query(request, frozenset())
    ctx, user = request.app[CONTEXT], request[USER]
    return web.json_response(targets_view(ctx.policy(), user))


async def status(request: web.Request) -> web.Response:
    read_query(request, frozenset())
    ctx, user = request.app[CONTEXT], request[USER]

    def work() -> JsonObject:
        mine = {
            state: ctx.grants.list_requests(RequestQuery(state, requester=user,
                                                         limit=MAX_LIST_LIMIT))
            for state in (RequestState.PENDING, RequestState.ACTIVE)
        }  # fmt: skip
        policy, now = ctx.policy(), ctx.clock.now()
        pending = []
        for found in mine[RequestState.PENDING]:
            view = request_view(found, policy.pending_timeout)
            view["approval"] = approval_status(policy, found, ctx.grants.approvals(found.id))
            pending.append(view)
        active = []
        for found in mine[RequestState.ACTIVE]:
            view = request_view(found)
            left = (found.ends_at - now).total_seconds() if found.ends_at else 0
            view["remaining_seconds"] = max(0, int(left))
            active.append(view)
        return {"user": user, "now": timestamp(now), "pending": pending, "active": active}

    return web.json_response(await ctx.blocking(work))
