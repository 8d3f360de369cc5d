"""`/api/v1/auth...`: single sign-on through the configured OpenID provider (proxy/identity).

All public (they are how a caller gets a bearer token); each answers 404 when no provider is
configured, but `GET /api/v1/auth`, which says so (`{"oidc": null}`). `logout` checks its bearer
itself: any session pgwarden issued, even one that expired or was ended, since the provider's
refresh token sent along is still worth revoking (a CLI signing out after a night away);
an unknown session or an API token is refused.

| route                              | body                          | answer                      |
|------------------------------------|-------------------------------|-----------------------------|
| GET  /api/v1/auth                  |                               | {"oidc": {...} or null}     |
| POST /api/v1/auth/device           |                               | flow id, code, URL          |
| POST /api/v1/auth/device/poll      | flow_id                       | 202 pending, 200 session    |
| POST /api/v1/auth/browser          | redirect_uri (loopback)       | flow id, authorization URL  |
| POST /api/v1/auth/browser/finish   | flow_id, code, state, iss?    | 200 session                 |
| POST /api/v1/auth/refresh          | refresh_token                 | 200 session                 |
| POST /api/v1/auth/logout (session) | refresh_token?                | 204                         |

A refused sign-in is 401 `sign_in_refused`, a provider that cannot be reached 503
`idp_unavailable`, each with a message that says what to do. The secrets in the bodies (codes,
tokens) are free of the free-text rules of other endpoints but bounded (`MAX_SECRET_CHARS`).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from proxy.api.auth import SIGN_IN_AGAIN, bearer_secret
from proxy.api.context import CONTEXT
from proxy.api.errors import ApiError, invalid_body, unauthenticated
from proxy.api.schemas import JSON_TYPE, parse_json_object
from proxy.identity.errors import IdpUnavailable, SignInBusy, SignInRefused
from proxy.identity.sessions import SESSION_PREFIX, session_digest
from proxy.identity.signin import SignedIn, SignInService

MAX_SECRET_CHARS: Final = 8192  # provider tokens and codes; Azure's refresh tokens run ~2 KB
PUBLIC: Final = frozenset({
    "/api/v1/auth", "/api/v1/auth/device", "/api/v1/auth/device/poll", "/api/v1/auth/browser",
    "/api/v1/auth/browser/finish", "/api/v1/auth/refresh", "/api/v1/auth/logout",
})  # fmt: skip


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/auth", describe),
        web.post("/api/v1/auth/device", guarded(start_device)),
        web.post("/api/v1/auth/device/poll", guarded(poll_device)),
        web.post("/api/v1/auth/browser", guarded(start_browser)),
        web.post("/api/v1/auth/browser/finish", guarded(finish_browser)),
        web.post("/api/v1/auth/refresh", guarded(refresh)),
        web.post("/api/v1/auth/logout", guarded(logout)),
    ]


Handler = Callable[[web.Request, SignInService], Awaitable[web.Response]]


def guarded(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler with the service, or 404 without one; refusals become 401, outages 503."""

    async def run(request: web.Request) -> web.Response:
        service = request.app[CONTEXT].identity
        if service is None:
            raise ApiError(404, "not_found", "single sign-on is not configured on this pgwarden")
        try:
            return await handler(request, service)
        except SignInRefused as exc:
            raise ApiError(401, "sign_in_refused", exc.message) from None
        except IdpUnavailable as exc:
            raise ApiError(503, "idp_unavailable", f"{exc.message}; try again shortly") from None
        except SignInBusy as exc:
            raise ApiError(429, "too_many_sign_ins", exc.message) from None

    return run


class StartLimit:
    """Sign-ins a client address may begin: `BURST` at once, then one every `REFILL` seconds
    (a person needs one; a script starting thousands is held back before the provider or the
    store sees it). Token buckets, the least recently seen address forgotten past `MAX_KEYS`."""

    BURST: Final = 20
    REFILL: Final = 3.0
    MAX_KEYS: Final = 10_000

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, source: str) -> None:
        """One start from `source`, or 429 if it has none left."""
        now = self._monotonic()
        tokens, at = self._buckets.get(source, (float(self.BURST), now))
        tokens = min(float(self.BURST), tokens + (now - at) / self.REFILL)
        if tokens < 1.0:
            raise ApiError(
                429, "too_many_sign_ins",
                f"too many sign-ins begun from {source}; try again in {self.REFILL:.0f} s",
            )  # fmt: skip
        self._buckets[source] = (tokens - 1.0, now)
        self._buckets.move_to_end(source)
        while len(self._buckets) > self.MAX_KEYS:
            self._buckets.popitem(last=False)


START_LIMIT: web.AppKey[StartLimit] = web.AppKey("sign_in_start_limit", StartLimit)


def start_limit(request: web.Request) -> None:
    """Count a flow start against the caller's address (the app holds one limiter: app.py)."""
    request.app[START_LIMIT].take(request.remote or "unknown")


async def describe(request: web.Request) -> web.Response:
    service = request.app[CONTEXT].identity
    oidc = None if service is None else await service.describe()
    return web.json_response({"oidc": oidc})


async def start_device(request: web.Request, service: SignInService) -> web.Response:
    await secrets_in(request, required=())
    start_limit(request)
    return web.json_response(await service.start_device())


async def poll_device(request: web.Request, service: SignInService) -> web.Response:
    body = await secrets_in(request, required=("flow_id",))
    outcome = await service.poll_device(body["flow_id"])
    if isinstance(outcome, SignedIn):
        return web.json_response(outcome.answer())
    return web.json_response({"status": "pending", "interval": outcome}, status=202)


async def start_browser(request: web.Request, service: SignInService) -> web.Response:
    body = await secrets_in(request, required=("redirect_uri",))
    redirect = body["redirect_uri"]
    if (problem := loopback_redirect_problem(redirect)) is not None:
        raise invalid_body(f"redirect_uri: {problem}")
    start_limit(request)
    return web.json_response(await service.start_browser(redirect))


async def finish_browser(request: web.Request, service: SignInService) -> web.Response:
    body = await secrets_in(request, required=("flow_id", "code", "state"), optional=("iss",))
    signed = await service.finish_browser(body["flow_id"], body["code"], body["state"],
                                          body.get("iss"))  # fmt: skip
    return web.json_response(signed.answer())


async def refresh(request: web.Request, service: SignInService) -> web.Response:
    body = await secrets_in(request, required=("refresh_token",))
    return web.json_response((await service.refresh(body["refresh_token"])).answer())


async def logout(request: web.Request, service: SignInService) -> web.Response:
    body = await secrets_in(request, required=(), optional=("refresh_token",))
    secret = bearer_secret(request.headers.get("Authorization"))
    if not secret.startswith(SESSION_PREFIX):
        raise invalid_body("this is an API token, not a session: revoke it with pgwarden token")
    if not await service.logout(session_digest(secret), body.get("refresh_token")):
        raise unauthenticated(f"unknown pgwarden session; {SIGN_IN_AGAIN}")
    return web.Response(status=204)


async def secrets_in(
    request: web.Request, *, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, str]:
    """The body's fields: exactly these, each a bounded one-line string."""
    document: dict[str, Any] = {}
    if request.body_exists:
        if request.content_type != JSON_TYPE:
            raise ApiError(415, "unsupported_media_type", f"send the body as {JSON_TYPE}")
        document = parse_json_object(await request.read())
    allowed = set(required) | set(optional)
    problems = [f"unknown field {k[:40]!r}" for k in sorted(set(document) - allowed)]
    problems += [f"{k}: required" for k in required if k not in document]
    for key, value in document.items():
        if key in allowed and not _short_line(value):
            problems.append(f"{key}: must be a string of 1 to {MAX_SECRET_CHARS} printable ASCII")
    if problems:
        raise invalid_body("; ".join(problems))
    return {key: str(value) for key, value in document.items()}


def _short_line(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_SECRET_CHARS
        and value.isascii()
        and value.isprintable()
    )


def loopback_redirect_problem(uri: str) -> str | None:
    """Why `uri` is not `http://127.0.0.1:PORT/callback`-like (RFC 8252 7.3), or None."""
    parts = urlsplit(uri)
    try:
        host = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        host = None
    if parts.scheme != "http" or host is None or not host.is_loopback:
        return "must be a loopback address, e.g. http://127.0.0.1:PORT/callback"
    if parts.query or parts.fragment or parts.username or parts.password:
        return "must have no query, fragment or user"
    return None
