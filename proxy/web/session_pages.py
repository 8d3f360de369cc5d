"""Live sessions, ending one, and a session's transcript from the audit log.

The list is the API's (`sessions_routes.visible_sessions`: every worker and replica, what the
person may see); whether a session here is running a query comes from its relay. Kill goes
through `sessions_routes.end_session`, the one exit every termination takes; a session that ended
meanwhile is said to be gone, not an error. A transcript is read from this server's audit log
(transcripts.py) and shown to whoever may see the session: its user, the target's approvers and
the admins.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.api.access import may_end_session, may_see_session
from proxy.api.errors import ApiError, not_found
from proxy.api.sessions_routes import SESSION_ID, end_session, visible_sessions
from proxy.web.deps import DEPS
from proxy.web.page import View, page, redirect
from proxy.web.transcripts import session_transcript


def routes() -> list[web.RouteDef]:
    return [
        web.get("/console/sessions", page(sessions), name="console:sessions"),
        web.post("/console/sessions/{id}/kill", page(kill), name="console:kill"),
        web.get("/console/sessions/{id}", page(transcript), name="console:transcript"),
    ]


async def sessions(view: View) -> web.StreamResponse:
    live, incomplete = await visible_sessions(view.ctx, view.user)
    policy, now = view.policy, view.ctx.clock.now()
    rows = []
    for replica, info in live:
        here = view.ctx.registry.get(info.session_id)
        running = None if here is None else here.relay.busy
        rows.append({
            "info": info, "replica": replica, "running": running,
            "left": (info.grant_ends_at - now).total_seconds(),
            "may_end": may_end_session(policy, info, view.user),
        })  # fmt: skip
    return view.render("sessions.html", rows=rows, incomplete=incomplete)


async def kill(view: View) -> web.StreamResponse:
    session_id = view.request.match_info["id"]
    try:
        await end_session(view.ctx, view.user, session_id, view.form.get("reason", ""))
    except ApiError as exc:
        if exc.status not in (404, 410):
            raise
        return redirect("/console/sessions?done=gone")
    return redirect("/console/sessions?done=killed")


async def transcript(view: View) -> web.StreamResponse:
    session_id = view.request.match_info["id"]
    if SESSION_ID.fullmatch(session_id) is None:
        raise not_found(f"session {session_id[:64]!r}")
    files = view.request.app[DEPS].audit_files
    found = await view.ctx.blocking(session_transcript, files(), session_id)
    if found is None or not may_see_session(view.policy, found.info, view.user):
        raise not_found(f"session {session_id} in this server's audit log")
    values: dict[str, Any] = {"t": found.transcript}
    return view.render("transcript.html", **values)
