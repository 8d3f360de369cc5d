"""Signing in to the console and out of it.

Two ways in, both ending in a console session cookie (guard.py):
- an API token (`pgwarden token create USER`), pasted once: checked as the API checks a bearer,
  it opens a session of `TOKEN_SESSION_TTL` that ends early if the token is revoked;
- the organization's identity provider (`identity.oidc`): the authorization-code flow with PKCE
  of proxy/identity, coming back to `/console/signin/callback` (register that URL with the
  provider). The flow's id rides in a short-lived cookie, so only the browser that began a
  sign-in can finish it.
Sign-ins, refusals and sign-outs are audited either way.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final
from urllib.parse import quote

from aiohttp import web

from proxy.api.auth import authenticate, token_digest
from proxy.api.auth_routes import start_limit
from proxy.api.context import CONTEXT, ApiContext
from proxy.api.errors import ApiError
from proxy.grants.store import StoreTx
from proxy.identity.errors import IdpUnavailable, SignInBusy, SignInRefused
from proxy.identity.record import Fact, RefusedFact, SignedInFact, SignedOutFact
from proxy.identity.sessions import new_session, session_digest
from proxy.identity.signin import AGAIN, audited_change
from proxy.identity.tokens import Person
from proxy.policy.models import UserName
from proxy.web import guard
from proxy.web.deps import DEPS, ConsoleDeps
from proxy.web.page import View, html, page, read_form, redirect
from proxy.web.render import render

FLOW_COOKIE_AGE: Final = 600  # seconds to come back from the identity provider
SIGNIN_COOKIE_AGE: Final = 3600
CALLBACK: Final = "/console/signin/callback"


def routes() -> list[web.RouteDef]:
    return [
        web.get("/console/signin", sign_in_page, name="console:signin"),
        web.post("/console/signin/token", with_token, name="console:signin-token"),
        web.post("/console/signin/sso", with_sso, name="console:signin-sso"),
        web.get(CALLBACK, sso_callback, name="console:signin-callback"),
        web.post("/console/signout", page(sign_out), name="console:signout"),
    ]


def safe_next(text: str | None) -> str:
    """Where to go after signing in: a console path only (no other site, no `//host`, and no
    control character, which the Location header cannot carry)."""
    if (
        text and text.startswith("/console/") and "\\" not in text and not text.startswith("//")
        and text.isascii() and text.isprintable()
    ):  # fmt: skip
        return text[:500]
    return "/console/"


async def sign_in_page(request: web.Request, *, why: str = "", status: int = 200) -> web.Response:
    ctx = request.app[CONTEXT]
    secret = guard.read_cookie(request, guard.COOKIE)
    if secret is not None and status == 200:
        try:
            await ctx.blocking(guard.signed_in, ctx, secret)
            return redirect(safe_next(request.query.get("next")))
        except guard.SignInNeeded as exc:
            why = why or exc.why
    signin_secret = guard.read_cookie(request, guard.SIGNIN_COOKIE) or guard.new_signin_secret()
    body = render(
        "signin.html", why=why or request.query.get("why", "")[:200],
        next=safe_next(request.query.get("next")), sso=ctx.identity is not None,
        issuer=ctx.identity.settings.issuer if ctx.identity is not None else "",
        csrf=guard.csrf_token(signin_secret),
    )  # fmt: skip
    response = html(body, status)
    if ctx.identity is not None:  # the single sign-on form's answer redirects to the provider
        issuer = guard.origin(ctx.identity.settings.issuer)
        response.headers["Content-Security-Policy"] = guard.csp([issuer])
    guard.set_cookie(request, response, guard.SIGNIN_COOKIE, signin_secret, SIGNIN_COOKIE_AGE)
    return response


async def _signin_form(request: web.Request) -> dict[str, str]:
    form = await read_form(request)
    guard.check_csrf(request, form, guard.read_cookie(request, guard.SIGNIN_COOKIE))
    return form


async def with_token(request: web.Request) -> web.Response:
    ctx, deps = request.app[CONTEXT], request.app[DEPS]
    try:
        form = await _signin_form(request)
        start_limit(request)  # bounds the refusals a stranger can make us audit
        token = form.get("token", "").strip()
        secret, max_age = await ctx.blocking(_token_session, ctx, deps, token)
    except ApiError as exc:
        if exc.status == 401:
            fact = RefusedFact("console-token", "token", "pgwarden", "", exc.message)
            await ctx.blocking(deps.audit.refused, fact)
        return await sign_in_page(request, why=exc.message, status=exc.status)
    return _signed_in(request, secret, max_age, form.get("next"))


def _token_session(ctx: ApiContext, deps: ConsoleDeps, token: str) -> tuple[str, int]:
    """A console session for the API token's user (blocking)."""
    if not token.startswith("pgw_"):
        raise ApiError(401, "unauthenticated", "paste an API token (it begins with pgw_)")
    user = authenticate(ctx.store, token, ctx.policy(), ctx.clock.now())
    with ctx.store.read() as tx:
        record = tx.token_by_digest(token_digest(token))
    assert record is not None  # authenticate() found it
    now = ctx.clock.now()
    person = Person(user, guard.TOKEN_SESSION_ISSUER, record.id, None, ())
    secret, session = new_session(person, now, deps.token_session_ttl)

    def change(tx: StoreTx) -> Fact:
        tx.insert_api_session(session)
        return SignedInFact(user, guard.TOKEN_SESSION_ISSUER, record.id, (), "console-token",
                            session.public_id, session.expires_at)  # fmt: skip

    audited_change(ctx.store, deps.audit, change)
    return secret, int(deps.token_session_ttl.total_seconds())


def _signed_in(
    request: web.Request, secret: str, max_age: int, next_path: str | None
) -> web.Response:
    response = redirect(safe_next(next_path))
    guard.set_cookie(request, response, guard.COOKIE, secret, max_age)
    guard.clear_cookie(request, response, guard.SIGNIN_COOKIE)
    return response


async def with_sso(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    if ctx.identity is None:
        return await sign_in_page(request, why="single sign-on is not configured", status=404)
    try:
        form = await _signin_form(request)
        start_limit(request)
        origin = f"{'https' if guard.secure(request) else 'http'}://{guard.public_host(request)}"
        started = await ctx.identity.start_browser(origin + CALLBACK)
    except (ApiError, SignInRefused, IdpUnavailable, SignInBusy) as exc:
        return await sign_in_page(request, why=exc.message, status=_status(exc))
    response = redirect(started["authorization_url"])
    flow = started["flow_id"] + "." + _b64(safe_next(form.get("next")))
    guard.set_cookie(request, response, guard.FLOW_COOKIE, flow, FLOW_COOKIE_AGE)
    return response


async def sso_callback(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    flow = guard.read_cookie(request, guard.FLOW_COOKIE)
    query = request.query
    if ctx.identity is None or flow is None or "." not in flow:
        why = "this sign-in was begun in another browser, or too long ago; sign in again"
        return await sign_in_page(request, why=why, status=400)
    flow_id, _, encoded_next = flow.partition(".")
    if "error" in query:
        why = f"the identity provider refused: {query.get('error_description') or query['error']}"
        return await sign_in_page(request, why=why[:300], status=401)
    try:
        signed = await ctx.identity.finish_browser(
            flow_id, query.get("code", ""), query.get("state", ""), query.get("iss")
        )
    except (SignInRefused, IdpUnavailable) as exc:
        why = exc.message.replace(AGAIN, "sign in again")  # here, not with the CLI's command
        return await sign_in_page(request, why=why, status=_status(exc))
    max_age = int((signed.session.expires_at - ctx.clock.now()).total_seconds())
    response = _signed_in(request, signed.token, max_age, _unb64(encoded_next))
    guard.clear_cookie(request, response, guard.FLOW_COOKIE)
    return response


async def sign_out(view: View) -> web.StreamResponse:
    digest = session_digest(view.secret)
    if view.session.issuer == guard.TOKEN_SESSION_ISSUER or view.ctx.identity is None:
        await view.ctx.blocking(_end_token_session, view.ctx, view.request.app[DEPS], digest)
    else:
        await view.ctx.identity.logout(digest, None)
    response = redirect("/console/signin?why=" + quote("you signed out"))
    guard.clear_cookie(view.request, response, guard.COOKIE)
    return response


def _end_token_session(ctx: ApiContext, deps: ConsoleDeps, digest: bytes) -> None:
    now = ctx.clock.now()

    def change(tx: StoreTx) -> Fact | None:
        session = tx.api_session(digest)
        if session is None or not tx.revoke_api_session(digest, now):
            return None
        return SignedOutFact(UserName(session.user), session.public_id, False)

    audited_change(ctx.store, deps.audit, change)


def _status(exc: Exception) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    return {SignInRefused: 401, IdpUnavailable: 503, SignInBusy: 429}.get(type(exc), 400)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> str:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "/console/"
