"""The requester's side: ask for access, follow one's requests, get the credential once.

The form offers only the targets and levels the policy lets the person request
(`views.targets_view`, the rule the lifecycle itself applies), with each level's longest
duration; a longer one is clamped by the lifecycle, and the page says so. A credential is issued
on a POST and shown on that answer only (never stored, never in a URL): its password, a ready
`psql` command and the connection URI, each with a copy button. Issuing again gives a new
password and ends the old one's use, which the button says.
"""

from __future__ import annotations

import shlex
from typing import Any, Final

from aiohttp import web

from proxy.api.errors import ApiError, translate
from proxy.api.requests_routes import dsn
from proxy.api.views import approval_status, targets_view
from proxy.grants.requests import RequestState
from proxy.grants.store import RequestQuery
from proxy.policy.durations import DurationError, parse_duration
from proxy.policy.models import AccessLevelName, TargetName
from proxy.web.page import View, page, redirect
from proxy.web.request_pages import request_id, visible

MY_REQUESTS: Final = 50  # the latest of one's own requests listed
DURATIONS: Final = ("15m", "30m", "1h", "2h", "4h", "8h")  # offered; each clamped to the level's


def routes() -> list[web.RouteDef]:
    return [
        web.get("/console/mine", page(mine), name="console:mine"),
        web.get("/console/new", page(new_request), name="console:new"),
        web.post("/console/new", page(create), name="console:create"),
        web.post("/console/requests/{id}/credential", page(credential), name="console:credential"),
    ]


async def mine(view: View) -> web.StreamResponse:
    def work() -> dict[str, Any]:
        found = view.ctx.grants.list_requests(RequestQuery(requester=view.user, limit=MY_REQUESTS))
        policy = view.policy
        rows = []
        for r in found:
            status = None
            if r.state is RequestState.PENDING:
                status = approval_status(policy, r, view.ctx.grants.approvals(r.id))
            rows.append({"r": r, "approval": status})
        return {"rows": rows, "now": view.ctx.clock.now()}

    return view.render("mine.html", **await view.ctx.blocking(work))


async def new_request(view: View) -> web.StreamResponse:
    query = view.request.query
    chosen = {"target": query.get("target", ""), "level": query.get("access_level", ""),
              "reason": query.get("reason", "")[:500]}  # fmt: skip
    return _form(view, chosen)


def _form(view: View, chosen: dict[str, str], status: int = 200, error: str = "") -> web.Response:
    targets = targets_view(view.policy, view.user)["targets"]
    return view.render("new.html", status=status, targets=targets, durations=DURATIONS,
                       chosen=chosen, error=error)  # fmt: skip


async def create(view: View) -> web.StreamResponse:
    form = view.form
    target, _, level = form.get("scope", "").partition("/")
    chosen = {"target": target, "level": level, "reason": form.get("reason", ""),
              "duration": form.get("duration", "")}  # fmt: skip
    try:
        duration = parse_duration(form.get("duration", ""))
    except DurationError as exc:
        return _form(view, chosen, 400, f"duration: {exc}")
    try:
        created = await view.ctx.blocking(
            view.ctx.grants.create_request, view.user, TargetName(target),
            AccessLevelName(level), duration, form.get("reason", ""),
        )  # fmt: skip
    except Exception as exc:  # the lifecycle's refusal: shown on the form, kept as typed
        error = translate(exc)
        if error is None or error.status >= 500:
            raise
        return _form(view, chosen, error.status, error.message)
    return redirect(f"/console/requests/{created.id}?done=created")


async def credential(view: View) -> web.StreamResponse:
    rid = request_id(view)

    def work() -> tuple[Any, str]:
        found = visible(view, rid)
        if found.state is not RequestState.ACTIVE:
            raise ApiError(409, "invalid_state", f"request {rid} is {found.state.value}: "
                           "a credential is issued for an active grant only")  # fmt: skip
        return found, view.ctx.grants.issue_credential(rid, view.user).password

    found, password = await view.ctx.blocking(work)
    host, port = view.ctx.proxy_address(view.request.url.host)
    sslmode = "require" if view.ctx.proxy.tls else "disable"
    uri = dsn(user=found.requester, password=password, host=host, port=port,
              database=found.target, sslmode=sslmode)  # fmt: skip
    return view.render(
        "credential.html", r=found, password=password, uri=uri, host=host, port=port,
        psql="psql " + shlex.quote(uri),
    )  # fmt: skip
