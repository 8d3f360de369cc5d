"""The HTTP application: routes, middlewares, and the unauthenticated health and metrics endpoints.

Middlewares, outermost first: `headers` (every answer `Cache-Control: no-store` — credentials
must never be cached — and `nosniff`), `errors.error_middleware` (everything becomes the JSON
error shape), `authenticate` (every path but the three public ones needs a bearer token — an
allow-list, so no spelling of a path can slip past it; see `auth.py`; the sign-in routes of
`auth_routes.py` are on it; and the routes of the web console, which the router matched to a
resource named `console:...`, check their own cookie: proxy/web/page.py).

`/healthz`, `/readyz` and `/metrics` take no token, so that load balancers, orchestrators and
Prometheus can reach them; they reveal nothing about requests or people (the metrics carry no
user names or secrets, and bounded labels only: SECURITY.md row 45). Bodies are limited to
`schemas.MAX_BODY_BYTES` by aiohttp itself (`client_max_size`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy.api import auth_routes, caller_routes, requests_routes, sessions_routes, slack_routes
from proxy.api.auth import PersonUnknown, authenticate, bearer_secret
from proxy.api.context import CONTEXT, USER, ApiContext, ReadinessCheck
from proxy.api.errors import error_middleware
from proxy.api.schemas import MAX_BODY_BYTES
from proxy.policy.models import UserName

log = logging.getLogger(__name__)

# The sign-in routes are public: they are how a caller gets a bearer token (auth_routes.py).
# Slack's callbacks too: Slack cannot send a token; its signature is checked (slack_routes.py).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"}) | auth_routes.PUBLIC
PUBLIC_PATHS |= slack_routes.PUBLIC
# Routes whose resource is named so authenticate themselves: the web console's (proxy/web/app.py).
SELF_AUTHENTICATED = "console:"

Pages = Callable[[web.Application], None]  # adds more routes (the web console) to the app


def build_app(ctx: ApiContext, pages: Pages | None = None) -> web.Application:
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[headers_middleware, error_middleware, auth_middleware],
    )
    app[CONTEXT] = ctx
    app[auth_routes.START_LIMIT] = auth_routes.StartLimit(ctx.clock.monotonic)
    app[slack_routes.REPLAYS] = slack_routes.Replays()
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            *requests_routes.routes(),
            *sessions_routes.routes(),
            *caller_routes.routes(),
            *auth_routes.routes(),
            *slack_routes.routes(),
        ]
    )
    if pages is not None:
        pages(app)
    return app


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in PUBLIC_PATHS and not _self_authenticated(request):
        ctx = request.app[CONTEXT]
        secret = bearer_secret(request.headers.get("Authorization"))  # malformed: 401 at once
        request[USER] = await ctx.blocking(_authenticate, ctx, secret)
    return await handler(request)


def _self_authenticated(request: web.Request) -> bool:
    """Whether the router matched a route that checks its own caller (by the resource's name:
    the match, not the path's spelling, decides)."""
    route = request.match_info.route
    name = route.resource.name if route.resource is not None else None
    return name is not None and name.startswith(SELF_AUTHENTICATED)


def _authenticate(ctx: ApiContext, secret: str) -> UserName:
    """The caller (blocking). A person signed in through another replica a moment ago may not be
    in this one's people yet: then they are read again, once, before refusing."""
    try:
        return authenticate(ctx.store, secret, ctx.policy(), ctx.clock.now())
    except PersonUnknown:
        if ctx.identity is None:
            raise
        ctx.identity.people.refresh()
        return authenticate(ctx.store, secret, ctx.policy(), ctx.clock.now())


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers HTTP. Nothing else is checked."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: every check in `ApiContext.readiness_checks` passes; `notes` say what is
    degraded without making the server unready."""
    ctx = request.app[CONTEXT]
    problems = await ctx.blocking(run_checks, list(ctx.readiness_checks))
    notes = await ctx.blocking(run_checks, list(ctx.readiness_notes))
    extra = {"notes": notes} if notes else {}
    if problems:
        body = {"status": "not_ready", "problems": problems, **extra}
        return web.json_response(body, status=503)
    return web.json_response({"status": "ready", **extra})


async def metrics(request: web.Request) -> web.Response:
    """Every metric of the runtime's Prometheus registry, in the text exposition format."""
    body = generate_latest(request.app[CONTEXT].metrics)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def run_checks(checks: list[ReadinessCheck]) -> list[str]:
    problems: list[str] = []
    for check in checks:
        try:
            problem = check()
        except Exception:
            log.exception("readiness check %r failed", check)
            problem = f"{getattr(check, '__name__', 'a readiness check')} failed (see the log)"
        if problem is not None:
            problems.append(problem)
    return problems
