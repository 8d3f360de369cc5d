"""What goes wrong in a sign-in: the person (or a forger) is refused, or the provider is down.

`SignInRefused.reason` is a short stable word for the log and the metric label
(`pgwarden_sign_in_failures_total{reason}`: a fixed set, so no caller can make new series);
`message` is what the person reads. `IdpUnavailable` means nobody can sign in right now, through
no fault of theirs.
"""

from __future__ import annotations

from typing import Final

from proxy.errors import PgwardenError

REASONS: Final = frozenset({
    "bad_token", "bad_signature", "algorithm", "unknown_key", "issuer", "audience", "expired",
    "not_yet_valid", "nonce", "state", "claims", "groups", "domain", "name_taken", "flow",
    "denied", "removed", "idp_unavailable",
})  # fmt: skip


class SignInRefused(PgwardenError):
    """A sign-in that must not succeed: 401."""

    sqlstate = "28000"

    def __init__(self, reason: str, message: str, *, user: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.user = user  # who, when it is known (the audit record names them)


class IdpUnavailable(PgwardenError):
    """The identity provider cannot be reached or answered nonsense: 503."""

    sqlstate = "08006"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.reason = "idp_unavailable"


class SignInBusy(PgwardenError):
    """Too many sign-ins are in progress (a stranger starting flows by the thousand): 429."""

    sqlstate = "53300"
