"""`/api/v1/sessions...`: list the live sessions the caller may see, and end one.

Sessions live in the proxy's registry on this event loop (and, with several worker processes, in
theirs: `ApiContext.workers` asks them), so these handlers touch no store for them and run on
the loop. Ending a session goes through its one exit (`Session.terminate`) with reason `killed`:
the client is told why (FATAL 57P01), its backend is ended, and the listeners (audit, metrics)
hear of it as of any other ending. The answer waits for the session to be gone, up to
`KILL_WAIT` seconds, and says whether it is.

With several replicas (`ApiContext.replicas`, a PostgreSQL store), the list adds the sessions of
every other live replica, read from the registry, and each session names its `replica`. Ending
another replica's session writes a kill order that replica carries out through the same exit
(audited there); the answer waits up to `REMOTE_KILL_WAIT` seconds for it to be done: 200 with
`ended` once it is, else 202 (the order stands; the holder carries it out at its next beat). A
session of a replica that is gone is answered 410: its sessions ended with it. When the registry
cannot be read, the list holds this replica's sessions and says it is `incomplete`.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from proxy.api.access import may_end_session, may_see_session
from proxy.api.context import CONTEXT, USER, ApiContext, OtherReplicas
from proxy.api.errors import ApiError, not_found
from proxy.api.schemas import BodySpec, read_body, read_query
from proxy.api.views import JsonObject, session_view
from proxy.errors import PgwardenError
from proxy.policy.models import UserName
from proxy.session.session import Ending, EndReason, Session, SessionInfo

KILL = BodySpec.of(optional="reason")
KILL_WAIT = 5.0  # seconds; a session's exit normally takes milliseconds (UPSTREAM_EXIT_GRACE: 1 s)
# Another replica carries a kill order out at its next heartbeat (each second, or at once when
# its change feed hears of the order); its session's exit then takes milliseconds.
REMOTE_KILL_WAIT = 3.0
REMOTE_KILL_POLL = 0.1  # seconds between two looks at the order
KILLED_MESSAGE = "pgwarden: session ended by an administrator"
SESSION_ID = re.compile(r"[0-9a-f]{1,64}")

# (worker here, or another replica's id; the session; whether its replica is live)
Found = tuple[int | str, SessionInfo, bool]


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/sessions", list_sessions),
        web.delete("/api/v1/sessions/{id}", kill_session),
    ]


async def list_sessions(request: web.Request) -> web.Response:
    ctx, user = request.app[CONTEXT], request[USER]
    read_query(request, frozenset())
    live, incomplete = await visible_sessions(ctx, user)
    answer: JsonObject = {} if incomplete is None else {"incomplete": incomplete}
    answer["sessions"] = [session_view(info, replica) for replica, info in live]
    return web.json_response(answer)


async def visible_sessions(
    ctx: ApiContext, user: UserName
) -> tuple[list[tuple[str | None, SessionInfo]], str | None]:
    """The live sessions `user` may see, oldest first, each with its replica (None with one);
    and, when the other replicas' could not be read, why the list is incomplete."""
    policy = ctx.policy()
    here = ctx.replicas.replica_id if ctx.replicas is not None else None
    everywhere = [(here, s.info) for s in ctx.registry if s.ending is None]
    if ctx.workers is not None:
        everywhere += [(here, info) for info in await ctx.workers.sessions()]
    incomplete = None
    if ctx.replicas is not None:
        try:
            everywhere += await ctx.blocking(ctx.replicas.sessions)
        except PgwardenError as exc:
            incomplete = f"only this replica's sessions are listed: {exc.message}"
    live = [(r, info) for r, info in everywhere if may_see_session(policy, info, user)]
    live.sort(key=lambda pair: (pair[1].started_at, pair[1].session_id))
    return live, incomplete


async def kill_session(request: web.Request) -> web.Response:
    ctx, user = request.app[CONTEXT], request[USER]
    reason = (await read_body(request, KILL)).get("reason", "")
    answer, status = await end_session(ctx, user, request.match_info["id"], reason)
    return web.json_response(answer, status=status)


async def end_session(
    ctx: ApiContext, user: UserName, session_id: str, reason: str
) -> tuple[JsonObject, int]:
    """End a live session `user` may end, wherever it is: the answer and its status (200 ended,
    202 ordered); ApiError 404 (unknown, or ended already), 403, 410 (its replica is gone)."""
    policy = ctx.policy()
    found = await _find(ctx, session_id) if SESSION_ID.fullmatch(session_id) else None
    if found is None or not may_see_session(policy, found[1], user):
        raise not_found(f"live session {session_id[:64]!r}")
    where, info, live = found
    if not may_end_session(policy, info, user):
        raise ApiError(
            403, "not_permitted",
            f"only an admin or an approver of {info.target} ({info.access_level}) may end "
            f"session {session_id}; to leave, just disconnect",
        )  # fmt: skip
    if not live:
        raise ApiError(
            410, "replica_gone",
            f"replica {where} is gone; its sessions ended with it (session {session_id})",
        )  # fmt: skip
    message = f"{KILLED_MESSAGE}: {reason}" if reason else KILLED_MESSAGE
    detail = f"killed by {user}" + (f": {reason}" if reason else "")
    if isinstance(where, str):
        return await _kill_elsewhere(ctx, where, info, user, reason=reason, message=message)
    ending = Ending(EndReason.KILLED, message, detail=detail)
    if where == 0:
        ended = await _end_here(ctx.registry.get(session_id), ending)
    else:
        assert ctx.workers is not None
        ended = await ctx.workers.end(where, session_id, ending)
    await ctx.blocking(ctx.notifier.session_killed, info, user, reason)
    replica = ctx.replicas.replica_id if ctx.replicas is not None else None
    return {"session": session_view(info, replica), "ended": ended}, 200


async def _find(ctx: ApiContext, session_id: str) -> Found | None:
    """(worker, info, True) of a live session here (worker 0) or in another worker process;
    else (replica id, info, whether that replica is live) of another replica's session."""
    session = ctx.registry.get(session_id)
    if session is not None and session.ending is None:
        return 0, session.info, True
    if ctx.workers is not None and (found := await ctx.workers.find(session_id)) is not None:
        return found[0], found[1], True
    if ctx.replicas is None:
        return None
    try:
        elsewhere = await ctx.blocking(ctx.replicas.find, session_id)
    except PgwardenError as exc:
        raise ApiError(503, "unavailable", f"{exc.message}; try again shortly") from None
    return None if elsewhere is None else (elsewhere[0], elsewhere[2], elsewhere[1])


async def _kill_elsewhere(
    ctx: ApiContext, holder: str, info: SessionInfo, user: UserName, *, reason: str, message: str
) -> tuple[JsonObject, int]:
    """Order replica `holder` to end the session, and wait a little for it to be done."""
    replicas = ctx.replicas
    assert replicas is not None
    detail = f"killed by {user} on replica {replicas.replica_id}" + (
        f": {reason}" if reason else ""
    )
    try:
        order = await ctx.blocking(
            replicas.order_kill, holder, info.session_id, actor=user, message=message,
            detail=detail,
        )  # fmt: skip
    except PgwardenError as exc:
        raise ApiError(503, "unavailable", f"{exc.message}; try again shortly") from None
    ended = await _wait_done(ctx, replicas, order)
    await ctx.blocking(ctx.notifier.session_killed, info, user, reason)
    view = session_view(info, holder)
    if ended is None:
        return {"session": view, "ended": False, "pending": True,
                "message": f"replica {holder} has the order to end session {info.session_id}; "
                           "it carries it out within seconds (list the sessions to see it gone)"
                }, 202  # fmt: skip
    return {"session": view, "ended": ended}, 200


async def _wait_done(ctx: ApiContext, replicas: OtherReplicas, order: int) -> bool | None:
    """The order's outcome, or None if it is not done within REMOTE_KILL_WAIT."""
    for _ in range(int(REMOTE_KILL_WAIT / REMOTE_KILL_POLL)):
        await asyncio.sleep(REMOTE_KILL_POLL)
        try:
            outcome = await ctx.blocking(replicas.kill_outcome, order)
        except PgwardenError:
            continue  # the order stands; the next look may get through
        if outcome is not None:
            return outcome
    return None


async def _end_here(session: Session | None, ending: Ending) -> bool:
    if session is None:
        return True  # it ended while we looked
    session.terminate(ending)
    try:
        await asyncio.wait_for(session.wait_ended(), KILL_WAIT)
    except TimeoutError:
        return False
    return True
