"""`/api/v1/requests...`: create, list, show, approve, deny, cancel, revoke, issue a credential.

Each handler reads and validates its input on the loop, then does all its store work in one
blocking function in the API's thread pool: look the request up, check that the caller may *see*
it (else 404, as if it did not exist — `access.py`), then let the lifecycle decide whether the
caller may *do* it (`rules.py`; refusals become 403, impossible transitions 409). A notification is
sent only after the change is committed, and never delays the answer.

A revocation the state store cannot record (its file gone, the disk full) is refused with a 503
that also says how to end the grant's sessions at once: `pgwarden kill`, which needs no store.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import quote

from aiohttp import web

from proxy.api.access import may_see_request, may_see_session, visible_requests
from proxy.api.context import CONTEXT, USER, ApiContext
from proxy.api.errors import ApiError, invalid_body, not_found, store_unavailable
from proxy.api.schemas import EMPTY, BodySpec, read_body, read_query
from proxy.api.views import (
    JsonObject,
    approval_status,
    needs_text,
    request_detail,
    request_view,
    timestamp,
)
from proxy.grants.lifecycle import LifecycleError
from proxy.grants.requests import AccessRequest, Approval, RequestId, RequestState
from proxy.grants.store import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    RequestQuery,
    StateStoreUnavailable,
)
from proxy.policy.durations import DurationError, parse_duration
from proxy.policy.models import AccessLevelName, Policy, TargetName, UserName

CREATE = BodySpec.of(
    required="target access_level duration", optional="reason", names="target access_level"
)
APPROVE = BodySpec.of(optional="comment")
DENY = BodySpec.of(required="reason")
REVOKE = BodySpec.of(optional="reason")
LIST_PARAMETERS = frozenset({"state", "limit"})
REQUEST_ID = re.compile(r"[0-9a-f]{1,64}")
MAX_KILL_HINTS = 5  # sessions named in a refused revocation's answer; `pgwarden sessions` has all


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/requests", create),
        web.get("/api/v1/requests", list_requests),
        web.get("/api/v1/requests/{id}", show),
        web.post("/api/v1/requests/{id}/approve", approve),
        web.post("/api/v1/requests/{id}/deny", deny),
        web.post("/api/v1/requests/{id}/cancel", cancel),
        web.post("/api/v1/requests/{id}/revoke", revoke),
        web.post("/api/v1/requests/{id}/credentials", credentials),
    ]


async def create(request: web.Request) -> web.Response:
    ctx, user = request.app[CONTEXT], request[USER]
    body = await read_body(request, CREATE)
    try:
        duration = parse_duration(body["duration"])
    except DurationError as exc:
        raise invalid_body(f"duration: {exc}") from exc
    created = await ctx.blocking(
        ctx.grants.create_request, user, TargetName(body["target"]),
        AccessLevelName(body["access_level"]), duration, body.get("reason", ""),
    )  # fmt: skip
    return web.json_response(_summary(ctx.policy(), created, ()), status=201)


async def list_requests(request: web.Request) -> web.Response:
    ctx, user = request.app[CONTEXT], request[USER]
    parameters = read_query(request, LIST_PARAMETERS)
    query = RequestQuery(_state(parameters.get("state")), limit=_limit(parameters.get("limit")))
    policy = ctx.policy()
    found = await ctx.blocking(ctx.grants.list_requests, visible_requests(policy, user, query))
    views = [request_view(r, policy.pending_timeout) for r in found]
    return web.json_response({"requests": views})


async def show(request: web.Request) -> web.Response:
    ctx, user, request_id = _parts(request)
    read_query(request, frozenset())

    def work() -> JsonObject:
        policy = ctx.policy()
        found = _visible(ctx, policy, request_id, user)
        history = ctx.grants.history(request_id)
        return request_detail(found, policy, ctx.grants.approvals(request_id), history)

    return web.json_response(await ctx.blocking(work))


async def approve(request: web.Request) -> web.Response:
    ctx, user, request_id = _parts(request)
    comment = (await read_body(request, APPROVE)).get("comment", "")

    def work() -> tuple[AccessRequest, tuple[Approval, ...]]:
        policy = ctx.policy()
        before = _visible(ctx, policy, request_id, user)
        prior = ctx.grants.approvals(request_id)
        if before.requester == user:
            status = approval_status(policy, before, prior)
            who = f"; it needs {needs_text(status)}" if status else ""
            raise ApiError(
                403, "self_approval",
                f"you cannot approve your own request {request_id} (admins neither){who}",
            )  # fmt: skip
        after = ctx.grants.approve(request_id, user, comment)
        return after, ctx.grants.approvals(request_id)

    after, approvals = await ctx.blocking(work)
    return web.json_response(_summary(ctx.policy(), after, approvals))


async def deny(request: web.Request) -> web.Response:
    ctx, user, request_id = _parts(request)
    reason = (await read_body(request, DENY))["reason"]
    if not reason.strip():
        raise invalid_body("reason: say why the request is denied")
    denied = await ctx.blocking(
        _act, ctx, request_id, user, lambda: ctx.grants.deny(request_id, user, reason)
    )
    return web.json_response(_summary(ctx.policy(), denied, ()))


async def cancel(request: web.Request) -> web.Response:
    ctx, user, request_id = _parts(request)
    await read_body(request, EMPTY)
    cancelled = await ctx.blocking(
        _act, ctx, request_id, user, lambda: ctx.grants.cancel(request_id, user)
    )
    return web.json_response(_summary(ctx.policy(), cancelled, ()))


async def revoke(request: web.Request) -> web.Response:
    ctx, user, request_id = _parts(request)
    reason = (await read_body(request, REVOKE)).get("reason", "")
    try:
        revoked = await ctx.blocking(
            _act, ctx, request_id, user, lambda: ctx.grants.revoke(request_id, user, reason)
        )
    except StateStoreUnavailable as exc:
        raise store_unavailable(exc, await _kill_instead(ctx, request_id, user)) from exc
    return web.json_response(_summary(ctx.policy(), revoked, ()))


async def credentials(request: web.Request) -> web.Response:
    ctx, user, request_id = _parts(request)
    await read_body(request, EMPTY)

    def work() -> tuple[AccessRequest, str]:
        policy = ctx.policy()
        found = _visible(ctx, policy, request_id, user)
        try:
            issued = ctx.grants.issue_credential(request_id, user)
        except LifecycleError as exc:
            if exc.state is not RequestState.PENDING:
                raise
            status = approval_status(policy, found, ctx.grants.approvals(request_id))
            needs = f"; it needs {needs_text(status)}" if status else ""
            message = f"request {request_id} is pending{needs}"
            raise ApiError(409, "invalid_state", message) from exc
        return found, issued.password  # PBKDF2 ran here, in the executor

    found, password = await ctx.blocking(work)
    assert found.ends_at is not None  # a credential is only issued for an active grant
    host, port = ctx.proxy_address(request.url.host)
    sslmode = "require" if ctx.proxy.tls else "disable"
    document = {
        "request_id": found.id, "user": found.requester, "password": password,
        "host": host, "port": port, "database": found.target, "sslmode": sslmode,
        "dsn": dsn(user=found.requester, password=password, host=host, port=port,
                   database=found.target, sslmode=sslmode),
        "expires_at": timestamp(found.ends_at),
    }  # fmt: skip
    return web.json_response(document, status=201)


def dsn(*, user: str, password: str, host: str, port: int, database: str, sslmode: str) -> str:
    """A libpq connection URI, every part percent-encoded."""
    shown_host = f"[{host}]" if ":" in host else host
    return (
        f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{shown_host}:{port}/"
        f"{quote(database, safe='')}?sslmode={sslmode}"
    )


# --- helpers ----------------------------------------------------------------------------------


def _parts(request: web.Request) -> tuple[ApiContext, UserName, RequestId]:
    text = request.match_info["id"]
    if REQUEST_ID.fullmatch(text) is None:
        raise not_found(f"request {text[:64]!r}")
    return request.app[CONTEXT], request[USER], RequestId(text)


def _visible(
    ctx: ApiContext, policy: Policy, request_id: RequestId, user: UserName
) -> AccessRequest:
    """The request, if `user` may see it; otherwise 404 exactly as for an unknown id."""
    found = ctx.grants.get(request_id)  # RequestNotFound -> 404 "no request ..."
    if not may_see_request(policy, found, user):
        raise not_found(f"request {request_id}")
    return found


def _act(
    ctx: ApiContext, request_id: RequestId, user: UserName, action: Callable[[], AccessRequest]
) -> AccessRequest:
    """`action()` on a request `user` may see (404 otherwise); blocking."""
    _visible(ctx, ctx.policy(), request_id, user)
    return action()


async def _kill_instead(ctx: ApiContext, request_id: RequestId, user: UserName) -> str:
    """How to end a grant's sessions when its revocation cannot be stored: `pgwarden kill` for
    each live one the caller may see (in every worker process), else how to find them."""
    policy = ctx.policy()
    live = [session.info for session in ctx.registry if session.ending is None]
    if ctx.workers is not None:
        live += await ctx.workers.sessions()
    ids = sorted(
        info.session_id
        for info in live
        if info.grant_id == request_id and may_see_session(policy, info, user)
    )
    if not ids:
        return "to end sessions now, run: pgwarden kill SESSION_ID (see: pgwarden sessions)"
    more = (
        f" (and {len(ids) - MAX_KILL_HINTS} more: pgwarden sessions)"
        if ids[MAX_KILL_HINTS:]
        else ""
    )
    kills = "; ".join(f"pgwarden kill {session_id}" for session_id in ids[:MAX_KILL_HINTS])
    return f"to end its sessions now, run: {kills}{more}"


def _summary(policy: Policy, request: AccessRequest, approvals: tuple[Approval, ...]) -> JsonObject:
    view = request_view(request, policy.pending_timeout)
    view["approval"] = approval_status(policy, request, approvals)
    return view


def _state(text: str | None) -> RequestState | None:
    if text is None:
        return None
    try:
        return RequestState(text)
    except ValueError:
        known = ", ".join(RequestState)
        raise ApiError(400, "invalid_query", f"state must be one of {known}") from None


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIST_LIMIT
    if not (
        text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= MAX_LIST_LIMIT
    ):
        raise ApiError(400, "invalid_query", f"limit must be a number from 1 to {MAX_LIST_LIMIT}")
    return int(text)
