"""What every console page does around its own work: find who is asking, check the form, render.

`page(handler)` wraps a handler `async (View) -> Response`: it reads the session cookie (none or
a dead one: to the sign-in page, saying why), reads and CSRF-checks a POSTed form before the
handler sees it, and turns refusals (the API's errors and the lifecycle's, by the same
`api.errors.translate`) into an HTML page with the same status and message the API would give.
Every answer gets the security headers (guard.py) and `Cache-Control: no-store` (app.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from proxy.api.context import CONTEXT, ApiContext
from proxy.api.errors import ApiError, translate
from proxy.api.sessions_routes import visible_sessions
from proxy.grants.store_identity import ApiSession
from proxy.policy.models import Policy, UserName
from proxy.web import guard
from proxy.web.render import render

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 3  # how often a page asks whether it changed (static/console.js)
MAX_FIELD_CHARS: Final = 4096  # a form field; reasons and comments are bounded lower by the rules
HTML: Final = "text/html"


@dataclass
class View:
    """One request to a console page: who, with which session, and the form they sent."""

    request: web.Request
    ctx: ApiContext
    session: ApiSession
    secret: str
    form: dict[str, str] = field(default_factory=dict)
    version: str = ""  # what the page shows, as of now (live.py); set for GETs

    @property
    def user(self) -> UserName:
        return self.session.user

    @property
    def policy(self) -> Policy:
        return self.ctx.policy()

    def render(self, template: str, status: int = 200, **values: Any) -> web.Response:
        policy = self.policy
        common = {
            "me": self.user, "csrf": guard.csrf_token(self.secret),
            "is_admin": policy.is_admin(self.user), "groups": sorted(policy.groups_of(self.user)),
            "notice": NOTICES.get(self.request.query.get("done", ""), ""),
            "version": self.version, "poll": POLL_SECONDS,
        }  # fmt: skip
        return html(render(template, **common, **values), status)


# What a form's redirect may announce on the next page: fixed texts chosen by key, so no text
# of anyone's reaches a page through a URL.
NOTICES: Final = {
    "approved": "You approved this request.",
    "denied": "You denied this request.",
    "revoked": "The grant was revoked; its sessions are being ended.",
    "cancelled": "You withdrew this request.",
    "created": "Your request was sent to its approvers.",
    "killed": "The session was ended.",
    "gone": "That session had already ended.",
}

Handler = Callable[[View], Awaitable[web.StreamResponse]]


def html(body: str, status: int = 200) -> web.Response:
    response = web.Response(text=body, status=status, content_type=HTML)
    guard.security_headers(response)
    return response


def page(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def run(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONTEXT]
        secret = guard.read_cookie(request, guard.COOKIE)
        try:
            session = await ctx.blocking(guard.signed_in, ctx, secret)
        except guard.SignInNeeded as exc:
            return to_sign_in(request, exc.why)
        assert secret is not None
        view = View(request, ctx, session, secret)
        try:
            if request.method == "POST":
                view.form = await read_form(request)
                guard.check_csrf(request, view.form, secret)
            else:
                view.version = await version(view)
            response = await handler(view)
        except Exception as exc:
            response = error_page(view, exc)
        guard.security_headers(response)
        return response

    return run


async def version(view: View) -> str:
    """A fingerprint of what the person's pages show (live.py): the state store's change
    counter, and the live sessions they may see."""
    counter = await view.ctx.blocking(view.ctx.grants.changes)
    live, _ = await visible_sessions(view.ctx, view.user)
    ids = ",".join(sorted(info.session_id for _, info in live))
    return f"{counter}-{hashlib.sha256(ids.encode()).hexdigest()[:16]}"


def to_sign_in(request: web.Request, why: str) -> web.Response:
    """303 to the sign-in page, which says why and comes back here afterwards (GETs only)."""
    target = "/console/signin"
    query = []
    if why:
        query.append("why=" + quote(why[:200], safe=""))
    if request.method == "GET" and request.path != "/console/":
        query.append("next=" + quote(request.path_qs[:500], safe=""))
    return redirect(target + ("?" + "&".join(query) if query else ""))


async def read_form(request: web.Request) -> dict[str, str]:
    """A urlencoded form's fields, each a bounded string (the first of repeated ones)."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise ApiError(415, "unsupported_media_type", "send the form as a web page does")
    try:
        posted = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "body_too_large", "this form is too large; shorten it") from None
    form: dict[str, str] = {}
    for key, value in posted.items():
        if not isinstance(value, str) or len(value) > MAX_FIELD_CHARS:
            raise ApiError(400, "invalid_body", f"{key[:40]}: at most {MAX_FIELD_CHARS} characters")
        form.setdefault(key, value)
    return form


def error_page(view: View, exc: Exception) -> web.Response:
    """The refusal as a page: the API's status and message, and a way back."""
    error = translate(exc)
    if error is None:
        log.exception("%s %s failed", view.request.method, view.request.path)
        error = ApiError(500, "internal", "internal error; see the pgwarden log")
    back = view.request.headers.get("Referer", "")
    same_site = back.startswith(f"{view.request.scheme}://{view.request.host}/console")
    return view.render("error.html", status=error.status, error=error,
                       back=back if same_site else "/console/")  # fmt: skip


def redirect(location: str) -> web.Response:
    """A 303 as a plain response: not raised (the API's error middleware would make an
    HTTPException JSON) nor an HTTPException returned (aiohttp deprecates that, and warns)."""
    response = web.Response(status=303, headers={"Location": location})
    guard.security_headers(response)
    return response
