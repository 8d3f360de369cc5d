"""What the session layer tells the rest of pgwarden: connections and logins refused, sessions
begun and ended, and the messages that cross the relay.

Metrics and audit implement `SessionObserver`; the session layer calls every registered observer
at these points and knows nothing else about them. `client_frames` is called with the complete
messages the relay observes from the client *before* the chunk holding them is forwarded, so an
observer that records them (the audit log) records a query before the database sees it.

An observer must be quick (it runs on the relay's path) and must not raise: a failing observer is
logged and skipped, except `AuditUnavailable`-style errors that an observer raises on purpose to
refuse a session or a query (fail closed) — those propagate as `PgwardenError`.
"""

from __future__ import annotations

from concurrent.futures import Future
from enum import StrEnum
from typing import TYPE_CHECKING

from proxy.wire import Frame

if TYPE_CHECKING:
    from proxy.session.admission import Cap
    from proxy.session.session import Ending, Session


class LoginFailure(StrEnum):
    """Why a login was refused (internal: the client always sees the same 28P01)."""

    UNKNOWN_USER = "unknown_user"
    UNKNOWN_TARGET = "unknown_target"
    NO_ACTIVE_GRANT = "no_active_grant"
    WRONG_PASSWORD = "wrong_password"  # noqa: S105 - a label, not a password
    GRANT_ENDED = "grant_ended_during_login"
    # Refused unchecked (proxy/auth/throttle.py): too many failures from this address, or for
    # this user name from this address.
    THROTTLED_SOURCE = "throttled_source"
    THROTTLED_USER_AND_SOURCE = "throttled_user_and_source"
    PROTOCOL = "protocol_violation"
    ABANDONED = "abandoned_exchange"  # the client hung up or stalled in the SCRAM exchange


class SessionObserver:
    """No-op base: override what you need.

    `CLIENT_MESSAGES` / `UPSTREAM_MESSAGES` are the message types (type bytes) whose complete
    messages the observer wants in `client_frames` / `upstream_frames`; every other message
    crosses the relay without being copied.
    """

    CLIENT_MESSAGES: frozenset[int] = frozenset()
    UPSTREAM_MESSAGES: frozenset[int] = frozenset()

    def connection_refused(self, source: str, cap: Cap) -> None:
        """A connection was refused because `cap` was reached (53300, or a silent close when
        even the refusals are over their cap)."""

    def login_failed(
        self, user: str, target: str, source: str, reason: LoginFailure, detail: str
    ) -> None:
        """A login was refused after the client named a user and a target."""

    def session_started(self, session: Session) -> Future[None] | None:
        """Both sides are logged in; the relay is about to start. May raise PgwardenError to
        refuse the session (fail closed), or return a future the login waits for."""
        return None

    def session_ended(self, session: Session, ending: Ending) -> None:
        """The session is over: both connections are closed."""

    def client_frames(self, session: Session, frames: list[Frame]) -> Future[None] | None:
        """Observed client messages, before they are forwarded. May raise PgwardenError to
        refuse them: the session then ends instead of forwarding. May return a future: the
        relay holds the client's data until it completes (a record becoming durable)."""
        return None

    def upstream_frames(self, session: Session, frames: list[Frame]) -> None:
        """Observed messages from the database, as they are forwarded."""
