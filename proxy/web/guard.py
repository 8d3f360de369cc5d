"""Who is using the console, and what protects them: the session cookie, CSRF, the headers.

A console session is a pgwarden API session (proxy/identity/sessions.py: a `pgs_` secret, only
its digest stored) held in a cookie: `HttpOnly`, `SameSite=Lax`, `Path=/console`, and `Secure`
with the `__Host-` prefix when the console is reached over HTTPS (directly or, as the
`X-Forwarded-Proto` of a TLS-terminating proxy says, through one). It is checked on every page
exactly as the API checks a bearer (`api.auth.authenticate_session`): unknown, signed out,
expired, or its person gone from the policy, it is refused, and the page says why.

CSRF: every form carries a token derived from the session's secret (SHA-256 under a label); a
POST whose token does not match, or whose `Origin` is another site, is refused before anything
is read or done. Another site can neither read the cookie nor compute the token; no server-side
key is needed, so any replica checks what another issued. Before sign-in, the sign-in forms use a
random cookie and its derived token the same way (no login CSRF).

Every console answer carries a strict Content-Security-Policy (no inline script or style, no
framing, forms post only here), `X-Frame-Options: DENY` and `Referrer-Policy: same-origin`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from proxy.api.auth import PersonUnknown, authenticate_session
from proxy.api.context import ApiContext
from proxy.api.errors import ApiError
from proxy.grants.store_identity import ApiSession
from proxy.identity.sessions import SESSION_PREFIX, session_digest
from proxy.policy.models import UserName

COOKIE: Final = "pgwarden_console"
SIGNIN_COOKIE: Final = "pgwarden_signin"  # before sign-in: the sign-in forms' CSRF secret
FLOW_COOKIE: Final = "pgwarden_sso_flow"  # a single sign-on in progress: its flow id
COOKIE_PATH: Final = "/console"
CSRF_FIELD: Final = "csrf_token"
MAX_COOKIE_CHARS: Final = 128  # a session secret is 47 characters
TOKEN_SESSION_ISSUER: Final = "pgwarden:api-token"  # noqa: S105 - a name. Console sessions opened with an API token
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SignInNeeded(Exception):
    """No usable console session: the page sends the person to sign in, saying why."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def secure(request: web.Request) -> bool:
    """Whether the person reached the console over HTTPS (here, or at a TLS proxy before it)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def public_host(request: web.Request) -> str:
    """The host the person's browser reached: a TLS proxy in front may have rewritten `Host`
    and said the original in `X-Forwarded-Host`."""
    forwarded = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    return forwarded or request.host


def own_hosts(request: web.Request) -> tuple[str, ...]:
    """This console's host names as a browser may give them in `Origin`. A cross-site form
    cannot set `X-Forwarded-Host` (a browser sends no custom header without the site's CORS
    consent), so believing it widens nothing for an attacker."""
    return (request.host, public_host(request))


def cookie_name(request: web.Request, base: str) -> str:
    """`__Host-` names over HTTPS: such a cookie is Secure, host-only and cannot be planted by
    a sibling domain or over plain HTTP."""
    return f"__Host-{base}" if secure(request) else base


def set_cookie(
    request: web.Request, response: web.StreamResponse, base: str, value: str, max_age: int
) -> None:
    over_tls = secure(request)
    response.set_cookie(
        cookie_name(request, base), value, max_age=max_age, httponly=True, samesite="Lax",
        secure=over_tls, path="/" if over_tls else COOKIE_PATH,  # __Host- requires Path=/
    )  # fmt: skip


def clear_cookie(request: web.Request, response: web.StreamResponse, base: str) -> None:
    path = "/" if secure(request) else COOKIE_PATH
    response.del_cookie(cookie_name(request, base), path=path)


def read_cookie(request: web.Request, base: str) -> str | None:
    value = request.cookies.get(cookie_name(request, base))
    if not value or len(value) > MAX_COOKIE_CHARS or not value.isascii():
        return None
    return value


def derived_token(secret: str, label: str) -> str:
    digest = hashlib.sha256(f"pgwarden-console:{label}:{secret}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def csrf_token(secret: str) -> str:
    """The token the forms of a session carry."""
    return derived_token(secret, "csrf")


def new_signin_secret() -> str:
    return secrets.token_urlsafe(32)


def check_csrf(request: web.Request, form: dict[str, str], secret: str | None) -> None:
    """403 unless the form's token is the one derived from `secret` and the POST comes from
    this site (when the browser says where it comes from)."""
    origin = request.headers.get("Origin")
    if (
        origin is not None
        and origin != "null"
        and urlsplit(origin).netloc not in own_hosts(request)
    ):
        raise ApiError(403, "csrf", "this form was sent from another site; nothing was done")
    sent = form.get(CSRF_FIELD, "")
    if secret is None or not hmac.compare_digest(sent.encode(), csrf_token(secret).encode()):
        raise ApiError(
            403, "csrf",
            "this form has expired or did not come from this console; nothing was done. "
            "Reload the page and try again",
        )  # fmt: skip


def csp(form_targets: Iterable[str] = ()) -> str:
    """CSP, letting forms lead to the `form_targets` origins too: form-action also governs where
    a form's answer redirects, and the single sign-on form's answer goes to the provider."""
    return CSP.replace("form-action 'self'", " ".join(("form-action 'self'", *form_targets)))


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def security_headers(response: web.StreamResponse) -> None:
    # setdefault: a page that set a policy of its own (the sign-in page's) keeps it.
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"


def signed_in(ctx: ApiContext, secret: str | None) -> ApiSession:
    """The console session `secret` opens (blocking); SignInNeeded saying why if none."""
    if secret is None or not secret.startswith(SESSION_PREFIX):
        raise SignInNeeded("")
    try:
        user = _session_user(ctx, secret)
    except ApiError as exc:
        raise SignInNeeded(exc.message.split("; ")[0]) from None
    with ctx.store.read() as tx:
        session = tx.api_session(session_digest(secret))
        tokens = tx.tokens() if session and session.issuer == TOKEN_SESSION_ISSUER else ()
    if session is None or session.user != user:  # ended in between (a sign-out elsewhere)
        raise SignInNeeded("your pgwarden session has ended")
    if session.issuer == TOKEN_SESSION_ISSUER:
        token = next((t for t in tokens if t.id == session.subject), None)
        if token is None or token.revoked_at is not None:
            raise SignInNeeded("the API token you signed in with was revoked")
    return session


def _session_user(ctx: ApiContext, secret: str) -> UserName:
    try:
        return authenticate_session(ctx.store, secret, ctx.policy(), ctx.clock.now())
    except PersonUnknown:
        if ctx.identity is None:
            raise
        ctx.identity.people.refresh()  # signed in on another replica a moment ago
        return authenticate_session(ctx.store, secret, ctx.policy(), ctx.clock.now())
