"""`/api/v1/sessions...`: list the live sessions the caller may see, and end one.

Sessions live in the proxy's registry on this event loop (and, with several worker processes, in
theirs: `ApiContext.workers` asks them), so these handlers touch no store and run on the loop.
Ending a session goes through its one exit (`Session.terminate`) with reason `killed`: the client
is told why (FATAL 57P01), its backend is ended, and the listeners (audit, metrics) hear of it as
of any other ending. The answer waits for the session to be gone, up to
`KILL_WAIT` seconds, and says whether it is.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from proxy.api.access import may_end_session, may_see_session
from proxy.api.context import CONTEXT, USER, ApiContext
from proxy.api.errors import ApiError, not_found
from proxy.api.schemas import BodySpec, read_body, read_query
from proxy.api.views import session_view
from proxy.session.session import Ending, EndReason, Session, SessionInfo

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
    everywhere = [session.info for session in ctx.registry if session.ending is None]
    if ctx.workers is not None:
        everywhere += await ctx.workers.sessions()
    live = [info for info in everywhere if may_see_session(policy, info, user)]
    live.sort(key=lambda info: (info.started_at, info.session_id))
    return web.json_response({"sessions": [session_view(info) for info in live]})


async def kill_session(request: web.Request) -> web.Response:
    ctx, user = request.app[CONTEXT], request[USER]
    session_id = request.match_info["id"]
    reason = (await read_body(request, KILL)).get("reason", "")
    policy = ctx.policy()
    found = await _find(ctx, session_id) if SESSION_ID.fullmatch(session_id) else None
    if found is None or not may_see_session(policy, found[1], user):
        raise not_found(f"live session {session_id[:64]!r}")
    worker, info = found
    if not may_end_session(policy, info, user):
        raise ApiError(
            403, "not_permitted",
            f"only an admin or an approver of {info.target} ({info.access_level}) may end "
            f"session {session_id}; to leave, just disconnect",
        )  # fmt: skip
    message = f"{KILLED_MESSAGE}: {reason}" if reason else KILLED_MESSAGE
    detail = f"killed by {user}" + (f": {reason}" if reason else "")
    ending = Ending(EndReason.KILLED, message, detail=detail)
    if worker == 0:
        ended = await _end_here(ctx.registry.get(session_id), ending)
    else:
        assert ctx.workers is not None
        ended = await ctx.workers.end(worker, session_id, ending)
    ctx.notifier.session_killed(info, user, reason)
    return web.json_response({"session": session_view(info), "ended": ended})


async def _find(ctx: ApiContext, session_id: str) -> tuple[int, SessionInfo] | None:
    """(worker, info) of a live session here (worker 0) or in another worker process."""
    session = ctx.registry.get(session_id)
    if session is not None and session.ending is None:
        return 0, session.info
    return await ctx.workers.find(session_id) if ctx.workers is not None else None


async def _end_here(session: Session | None, ending: Ending) -> bool:
    if session is None:
        return True  # it ended while we looked
    session.terminate(ending)
    try:
        await asyncio.wait_for(session.wait_ended(), KILL_WAIT)
    except TimeoutError:
        return False
    return True
