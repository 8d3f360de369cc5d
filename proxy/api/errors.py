"""API errors: one JSON shape, stable codes, and the one place exceptions become responses.

Every error answer is `{"error": {"code": CODE, "message": TEXT}}`. The code is stable (scripts
branch on it); the message is for people and says what to do next. `error_middleware` turns
`ApiError`, the lifecycle's errors and aiohttp's own HTTP errors (unknown path, wrong method, body
too large) into that shape; anything else is a 500 with a generic message, details in the log.

| status | code                   | when                                                         |
|--------|------------------------|--------------------------------------------------------------|
| 400    | bad_json               | the body is not a JSON object (syntax, encoding, duplicates) |
| 400    | invalid_body           | a field is missing, unknown, of the wrong type or value      |
| 400    | invalid_query          | an unknown or bad query parameter                            |
| 400    | invalid_request        | the request does not fit the policy (unknown target, ...)    |
| 401    | unauthenticated        | no, a malformed, an unknown or a revoked bearer token        |
| 403    | not_permitted          | the caller may see this but not do this                      |
| 403    | self_approval          | approving one's own request (admins included)                |
| 404    | not_found              | no such request or session — or one the caller may not see  |
| 405    | method_not_allowed     | a known path with another method                             |
| 408    | body_timeout           | the announced body did not arrive in time                    |
| 409    | invalid_state          | not possible in the request's state (approve after revoke)   |
| 413    | body_too_large         | the body is over `schemas.MAX_BODY_BYTES`                    |
| 415    | unsupported_media_type | a body that is not `application/json`                        |
| 500    | internal               | a bug; see the server log                                    |
| 503    | unavailable            | the state store, or the audit log, cannot be used right now  |

A 503 says what is wrong with the state store, its path, and what is refused until when:
`the state store /var/lib/pgwarden/state.db cannot be written (disk full); approvals and
credentials are refused until it can` (`StateStoreUnavailable.explanation`). No traceback: the
store logged the problem once, as an ERROR, when it began.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.errors import PgwardenError
from proxy.grants.lifecycle import LifecycleError, NotAudited, RequestNotFound
from proxy.grants.rules import InvalidRequest, NotPermitted
from proxy.grants.store import StateStoreUnavailable, StoreError

log = logging.getLogger(__name__)

_HTTP_CODES: Final = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An error answer: HTTP status, stable code, message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"no {what}")


def invalid_body(message: str) -> ApiError:
    return ApiError(400, "invalid_body", message)


def unauthenticated(message: str) -> ApiError:
    return ApiError(401, "unauthenticated", message)


def store_unavailable(exc: StateStoreUnavailable, then: str = "") -> ApiError:
    """503 with what the store refuses and why; `then`: what the caller can do instead."""
    return ApiError(503, "unavailable", f"{exc.explanation}; {then}" if then else exc.explanation)


def error_response(status: int, code: str, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="pgwarden"'} if status == 401 else None
    body = {"error": {"code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers)


# The lifecycle's and the store's errors, by class: (status, code). The first match wins.
_TRANSLATIONS: Final[tuple[tuple[type[PgwardenError], int, str], ...]] = (
    (RequestNotFound, 404, "not_found"),
    (NotPermitted, 403, "not_permitted"),
    (LifecycleError, 409, "invalid_state"),
    (InvalidRequest, 400, "invalid_request"),
    (NotAudited, 503, "unavailable"),  # an action the audit log could not record first
)


def translate(exc: Exception) -> ApiError | None:
    """The API error for an exception of the lifecycle or the store; None for anything else."""
    if isinstance(exc, ApiError):
        return exc
    for kind, status, code in _TRANSLATIONS:
        if isinstance(exc, kind):
            return ApiError(status, code, exc.message)  # the message only: details are for logs
    if isinstance(exc, StateStoreUnavailable):
        return store_unavailable(exc)
    if isinstance(exc, StoreError):
        log.error("state store unavailable: %s", exc)
        return ApiError(503, "unavailable", "the state store is unavailable; try again shortly")
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
        message = _http_message(request, exc)
        return error_response(exc.status, code, message)
    except Exception as exc:
        api_error = translate(exc)
        if api_error is None:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "internal", "internal error; see the pgwarden log")
        return error_response(api_error.status, api_error.code, api_error.message)


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no such endpoint: {request.method} {request.path[:200]}"
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        return f"{request.method} is not allowed on {request.path[:200]} (allowed: {allowed})"
    if exc.status == 413:
        return f"the request body is too large ({exc.text or 'over the limit'})"
    return exc.reason
