"""Failed and throttled logins on a connection: refused, counted, delayed, logged and reported.

The rules are the throttle's (proxy/auth/throttle.py: what counts against whom); this module
applies them where the handshake needs them (SECURITY.md rows 14 and 17):

- `refuse_if_throttled`, right after the StartupMessage: a throttled attempt gets the same 28P01
  as a wrong password at once, with no SCRAM exchange and nothing spent, so it costs pgwarden
  almost nothing and frees its pre-auth slot at once. Nothing here depends on whether the user
  exists: an unknown name's failures count exactly like a real one's.
- `login_failed`, when the exchange fails: a wrong proof (real or mock) is a CREDENTIAL failure;
  a broken exchange is a PROTOCOL one, whatever the grant lookup said before.
- `login_misdirected`, when the proof was right but for a grant on another target (a wrong
  database name): told to the client as 3D000 by the handshake, reported, not counted.
- `login_abandoned`, when the client hangs up or stalls after its first SCRAM message (before
  it, hanging up is how psql asks the user for a password, and costs nothing).

Each is logged with its true reason (throttled refusals through the rate-limited `QuietLog`) and
reported to the observers (metrics, audit) as a `LoginFailure`.
"""

from __future__ import annotations

import asyncio
import logging

from proxy.auth import CredentialRejection, InvalidPasswordError
from proxy.auth.throttle import Failure, Throttled
from proxy.errors import PgwardenError
from proxy.policy.models import TargetName, UserName
from proxy.session.context import ProxyContext
from proxy.session.login import ClientConnection
from proxy.session.observer import LoginFailure
from proxy.session.quiet_log import held_back_note

log = logging.getLogger(__name__)

# A failure delay (a user failing from everywhere) never takes more than this share of the login
# timeout: the client must get its 28P01, not a timeout that would set the case apart.
MAX_DELAY_SHARE_OF_LOGIN_TIMEOUT = 0.25

_THROTTLED = {
    Throttled.SOURCE: (LoginFailure.THROTTLED_SOURCE, "too many failed logins from this address"),
    Throttled.USER_AND_SOURCE: (
        LoginFailure.THROTTLED_USER_AND_SOURCE,
        "too many failed logins for this user from this address",
    ),
}
# Neither says anything about the client's password: they count against its address alone.
_SOURCE_ONLY = frozenset((LoginFailure.PROTOCOL, LoginFailure.ABANDONED))


class LoginThrottled(InvalidPasswordError):
    """A login refused unchecked: the 28P01 of a wrong password. Logged where it is raised."""

    def __init__(self, user: str) -> None:
        super().__init__(user, CredentialRejection.THROTTLED)


def refuse_if_throttled(
    conn: ClientConnection, user: UserName, target: TargetName, ctx: ProxyContext
) -> None:
    """Raise LoginThrottled if this source, or this user from this source, is throttled."""
    throttled = ctx.throttle.check(user, conn.source)
    if throttled is None:
        return
    reason, detail = _THROTTLED[throttled]
    if (held_back := ctx.quiet_log.admit(reason)) is not None:
        log.info(
            "login of %r to %r from %s refused unchecked: %s%s",
            user, target, conn.source, detail, held_back_note(held_back),
        )  # fmt: skip
    _tell_observers(conn, user, target, ctx, reason=reason, detail=detail)
    raise LoginThrottled(user)


async def login_failed(
    conn: ClientConnection,
    user: UserName,
    target: TargetName,
    ctx: ProxyContext,
    *,
    refusal: tuple[LoginFailure, str] | None,
    exc: PgwardenError,
) -> None:
    """Count a failed exchange, log why, tell the observers; wait if the user is under attack."""
    reason, detail = exchange_failure(exc)
    if reason is not LoginFailure.PROTOCOL and refusal is not None:
        reason, detail = refusal  # no grant to check against: say why, not "wrong password"
    delay = _count(conn, user, target, ctx, reason=reason, detail=detail)
    if delay > 0:
        await asyncio.sleep(delay)


def login_abandoned(
    conn: ClientConnection, user: UserName, target: TargetName, ctx: ProxyContext
) -> None:
    """The client hung up or stalled in the middle of its SCRAM exchange."""
    detail = "the client left mid-exchange"
    _count(conn, user, target, ctx, reason=LoginFailure.ABANDONED, detail=detail)


def login_misdirected(
    conn: ClientConnection,
    user: UserName,
    target: TargetName,
    ctx: ProxyContext,
    *,
    refusal: tuple[LoginFailure, str],
) -> None:
    """The client proved the credential of a grant on another target: a wrong database name,
    not a guess, so it is logged and reported but not counted against anyone."""
    reason, detail = refusal
    log.info(
        "login of %r to %r from %s refused after a valid proof: %s (%s)",
        user, target, conn.source, reason, detail,
    )  # fmt: skip
    _tell_observers(conn, user, target, ctx, reason=reason, detail=detail)


def exchange_failure(exc: PgwardenError) -> tuple[LoginFailure, str]:
    """Why a login whose grant was found failed in the exchange, and the text the log shows."""
    if isinstance(exc, InvalidPasswordError):
        ended = exc.reason is CredentialRejection.GRANT_ENDED
        return LoginFailure.GRANT_ENDED if ended else LoginFailure.WRONG_PASSWORD, exc.reason.value
    return LoginFailure.PROTOCOL, exc.message


def _count(
    conn: ClientConnection,
    user: UserName,
    target: TargetName,
    ctx: ProxyContext,
    *,
    reason: LoginFailure,
    detail: str,
) -> float:
    """Record the failure with the throttle; the delay before answering it (seconds)."""
    failure = Failure.PROTOCOL if reason in _SOURCE_ONLY else Failure.CREDENTIAL
    delay = ctx.throttle.record_failure(user, conn.source, failure)
    delay = min(delay, ctx.login_timeout * MAX_DELAY_SHARE_OF_LOGIN_TIMEOUT)
    late = f"; answered after {delay:g} s (this user fails from many addresses)" if delay else ""
    log.info(
        "login of %r to %r from %s failed: %s (%s)%s",
        user, target, conn.source, reason, detail, late,
    )  # fmt: skip
    _tell_observers(conn, user, target, ctx, reason=reason, detail=detail)
    return delay


def _tell_observers(
    conn: ClientConnection,
    user: UserName,
    target: TargetName,
    ctx: ProxyContext,
    *,
    reason: LoginFailure,
    detail: str,
) -> None:
    for observer in ctx.observers:
        observer.login_failed(user, target, conn.source, reason, detail)
