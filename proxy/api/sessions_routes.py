"""`/api/v1/sessions...`: list the live sessions the caller may see, and end one.

Sessions live in the proxy's registry on this event loop, so these handlers touch no store and
run on the loop. Ending a session goes through its one exit (`Session.terminate`) with reason
`killed`: the client is told why (FATAL 57P01), its backend is ended, and the listeners (audit,
metrics) hear of it as of any other ending. The answer waits for the session to be gone, up to
`KILL_WAIT` seconds, and says whether it is.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from proxy.api.access import may_end_session, may_see_session
from proxy.api.context import CONTEXT, USER
from proxy.api.errors import ApiError, not_found
from proxy.api.schemas import BodySpec, read_body, read_query
from proxy.api.views import session_view
from proxy.session.session import Ending, EndReason

KILL = BodySpec.of(optional="reason")
KILL_WAIT = 5.0  # seconds; a session's exit normally takes milliseconds (UPSTREAM_EXIT_GRACE: 1 s)
KILLED_MESSAGE = "pgwarden: session ended by an administrator"
SESSION_ID = re.compile(r"[0-9a-f]{1,64}")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/sessions", list_sessions),
        web.delete("/api/v1/sessions/{id}", kill_session),
    ]


async def list_sessions(request: web.Request) -> web.Response:
    ctx, user = request.app[CONTEXT], request[USER]
    read_query(request, frozenset())
    policy = ctx.policy()
    live = [
        session.info
        for session in ctx.registry
        if session.ending is None and may_see_session(policy, session.info, user)
    ]
    live.sort(key=lambda info: (info.started_at, info.session_id))
    return web.json_response({"sessions": [session_view(info) for info in live]})


async def kill_session(request: web.Request) -> web.Response:
    ctx, user = request.app[CONTEXT], request[USER]
    session_id = request.match_info["id"]
    reason = (await read_body(request, KILL)).get("reason", "")
    policy = ctx.policy()
    session = ctx.registry.get(session_id) if SESSION_ID.fullmatch(session_id) else None
    if session is None or session.ending is not None:
        raise not_found(f"live session {session_id[:64]!r}")
    info = session.info
    if not may_see_session(policy, info, user):
        raise not_found(f"live session {session_id[:64]!r}")
    if not may_end_session(policy, info, user):
        raise ApiError(
            403, "not_permitted",
            f"only an admin or an approver of {info.target} ({info.access_level}) may end "
            f"session {session_id}; to leave, just disconnect",
        )  # fmt: skip
    message = f"{KILLED_MESSAGE}: {reason}" if reason else KILLED_MESSAGE
    detail = f"killed by {user}" + (f": {reason}" if reason else "")
    session.terminate(Ending(EndReason.KILLED, message, detail=detail))
    try:
        await asyncio.wait_for(session.wait_ended(), KILL_WAIT)
        ended = True
    except TimeoutError:
        ended = False
    ctx.notifier.session_killed(info, user, reason)
    return web.json_response({"session": session_view(info), "ended": ended})
